# Deployment (docker/, k8s/; see docs/deploy.md and k8s/README.md).
#   make docker-lint               hadolint every docker/*.Dockerfile
#   make k8s-render                kubectl kustomize each overlay -> build/k8s/<overlay>.yaml
#   make k8s-validate              kubernetes-validate --strict on the rendered overlays + the deploy tests
#   make images                    docker build gateway + triton (gpu, cpu) images (needs Docker)
#   make compose-up                one GPU host: Triton + gateway + Prometheus + Grafana (needs Docker)
K8S_OVERLAYS := cpu gpu
K8S_VERSION ?= 1.30
IMAGE_PREFIX ?= visionserve
IMAGE_TAG ?= 0.1.0
DOCKER ?= docker
VBIN := $(VENV)/bin

.PHONY: docker-lint k8s-render k8s-validate test-deploy images compose-up compose-down

docker-lint: setup  ## hadolint every Dockerfile under docker/
	$(VBIN)/hadolint docker/*.Dockerfile && echo "hadolint: ok"

k8s-render: setup  ## render the k8s overlays (cpu, gpu) into build/k8s/<overlay>.yaml
	@mkdir -p build/k8s
	@for o in $(K8S_OVERLAYS); do \
	  $(VBIN)/kubectl kustomize k8s/overlays/$$o > build/k8s/$$o.yaml || exit 1; \
	  echo "build/k8s/$$o.yaml: $$(grep -c '^kind:' build/k8s/$$o.yaml) objects"; done

# ServiceMonitor/PrometheusRule (CRDs) have no schema in kubernetes-validate: it warns for
# them; the deploy tests check them structurally.
k8s-validate: k8s-render  ## strict schema validation of the rendered overlays + policy tests
	$(VBIN)/kubernetes-validate --strict --quiet -k $(K8S_VERSION) $(addprefix build/k8s/,$(addsuffix .yaml,$(K8S_OVERLAYS)))
	$(PY) -m pytest -q tests/unit/test_deploy_k8s.py

test-deploy: setup  ## the docker/ and k8s/ tests only
	$(PY) -m pytest -q tests/unit/test_deploy_docker.py tests/unit/test_deploy_k8s.py

images:  ## build the images (needs a Docker engine; ./weights holds real weights, else SYNTHETIC)
	$(DOCKER) build -f docker/gateway.Dockerfile -t $(IMAGE_PREFIX)-gateway:$(IMAGE_TAG) .
	$(DOCKER) build -f docker/triton.Dockerfile --target gpu -t $(IMAGE_PREFIX)-triton:$(IMAGE_TAG)-gpu .
	$(DOCKER) build -f docker/triton.Dockerfile --target cpu -t $(IMAGE_PREFIX)-triton:$(IMAGE_TAG)-cpu .

compose-up:  ## start the one-GPU-host stack (set GRAFANA_ADMIN_PASSWORD first)
	$(DOCKER) compose -f docker/compose.yaml up -d --build

compose-down:  ## stop it (volumes, incl. the engine cache, are kept)
	$(DOCKER) compose -f docker/compose.yaml down
