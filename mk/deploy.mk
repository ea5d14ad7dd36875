# Deployment (docker/, k8s/; see docs/deploy.md and k8s/README.md).
#   make docker-lint               hadolint every docker/*.Dockerfile
#   make k8s-render                kubectl kustomize each overlay and Job -> build/k8s/<name>.yaml
#   make k8s-validate              kubernetes-validate --strict on the rendered overlays + the deploy tests
#   make images                    docker build gateway + triton (gpu, cpu) images (needs Docker)
#   make compose-up                one GPU host: Triton + gateway + Prometheus + Grafana (needs Docker)
K8S_OVERLAYS := cpu gpu gpu-prometheus-adapter
K8S_JOBS := plan-build storage-preflight
K8S_VERSION ?= 1.30
IMAGE_PREFIX ?= visionserve
IMAGE_TAG ?= 0.1.0
DOCKER ?= docker
VBIN := $(VENV)/bin

.PHONY: docker-lint k8s-render k8s-validate test-deploy images compose-up compose-down

docker-lint: setup  ## hadolint every Dockerfile under docker/
	$(VBIN)/hadolint docker/*.Dockerfile && echo "hadolint: ok"

k8s-render: setup  ## render the k8s overlays and Jobs into build/k8s/<name>.yaml
	@mkdir -p build/k8s
	@for o in $(addprefix overlays/,$(K8S_OVERLAYS)) $(K8S_JOBS); do n=$$(basename $$o); \
	  $(VBIN)/kubectl kustomize k8s/$$o > build/k8s/$$n.yaml || exit 1; \
	  echo "build/k8s/$$n.yaml: $$(grep -c '^kind:' build/k8s/$$n.yaml) objects"; done

# ServiceMonitor/PrometheusRule/ScaledObject (CRDs) have no schema in kubernetes-validate: it
# warns for them; the deploy tests check them structurally.
k8s-validate: k8s-render  ## strict schema validation of the rendered overlays and Jobs + policy tests
	$(VBIN)/kubernetes-validate --strict --quiet -k $(K8S_VERSION) $(addprefix build/k8s/,$(addsuffix .yaml,$(K8S_OVERLAYS) $(K8S_JOBS)))
	$(PY) -m pytest -q tests/unit/test_deploy_k8s.py

test-deploy: setup  ## the docker/ and k8s/ tests only
	$(PY) -m pytest -q tests/unit/test_deploy_docker.py tests/unit/test_deploy_k8s.py tests/unit/test_deploy_entrypoint.py tests/unit/test_engines_store.py

images:  ## build the images (needs a Docker engine; ./weights holds real weights, else SYNTHETIC)
	$(DOCKER) build -f docker/gateway.Dockerfile -t $(IMAGE_PREFIX)-gateway:$(IMAGE_TAG) .
	$(DOCKER) build -f docker/triton.Dockerfile --target gpu -t $(IMAGE_PREFIX)-triton:$(IMAGE_TAG)-gpu .
	$(DOCKER) build -f docker/triton.Dockerfile --target cpu -t $(IMAGE_PREFIX)-triton:$(IMAGE_TAG)-cpu .

compose-up:  ## start the one-GPU-host stack (set GRAFANA_ADMIN_PASSWORD first)
	$(DOCKER) compose -f docker/compose.yaml up -d --build

compose-down:  ## stop it (volumes, incl. the engine cache, are kept)
	$(DOCKER) compose -f docker/compose.yaml down
