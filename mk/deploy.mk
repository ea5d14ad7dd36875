# Deployment (docker/, deploy/, k8s/; see docs/deploy.md and k8s/README.md).
#   make docker-lint               hadolint every docker/*.Dockerfile
#   make k8s-render                kubectl kustomize every render root -> build/k8s/<name>.yaml
#   make k8s-validate              kubernetes-validate --strict on every render + the k8s policy tests
#   make test-deploy               the docker/, deploy/ and k8s/ tests only
#   make images                    docker build gateway + triton (gpu, cpu) images (needs Docker)
#   make compose-up                one GPU host: Triton + gateway + Prometheus + Grafana (needs Docker)
# The render roots, in runbook order (k8s/README.md); every one takes k8s/config's values.
K8S_RENDERS := setup plan-store storage-preflight plan-build overlays/cpu overlays/gpu \
	overlays/gpu-prometheus-adapter ingress
K8S_VERSION ?= 1.30
IMAGE_PREFIX ?= visionserve
IMAGE_TAG ?= 0.1.0
DOCKER ?= docker
VBIN := $(VENV)/bin
DEPLOY_TESTS := tests/unit/test_deploy_docker.py tests/unit/test_deploy_compose.py \
	tests/unit/test_deploy_gateway_image.py tests/unit/test_deploy_entrypoint.py tests/unit/test_deploy_plans.py \
	tests/unit/test_deploy_k8s.py tests/unit/test_deploy_k8s_values.py tests/unit/test_deploy_runbook.py \
	tests/unit/test_engines_store.py

.PHONY: docker-lint k8s-render k8s-validate test-deploy images compose-up compose-down

docker-lint: setup  ## hadolint every Dockerfile under docker/
	$(VBIN)/hadolint docker/*.Dockerfile && echo "hadolint: ok"

k8s-render: setup  ## render every k8s root into build/k8s/<name>.yaml
	@mkdir -p build/k8s
	@for r in $(K8S_RENDERS); do n=$$(basename $$r); \
	  $(VBIN)/kubectl kustomize k8s/$$r > build/k8s/$$n.yaml || exit 1; \
	  echo "build/k8s/$$n.yaml: $$(grep -c '^kind:' build/k8s/$$n.yaml) objects"; done

# ServiceMonitor/PrometheusRule/ScaledObject (CRDs) have no schema in kubernetes-validate: it
# warns for them; the deploy tests check them structurally.
k8s-validate: k8s-render  ## strict schema validation of every render + the k8s policy tests
	$(VBIN)/kubernetes-validate --strict --quiet -k $(K8S_VERSION) $(foreach r,$(K8S_RENDERS),build/k8s/$(notdir $(r)).yaml)
	$(PY) -m pytest -q tests/unit/test_deploy_k8s.py tests/unit/test_deploy_k8s_values.py tests/unit/test_deploy_runbook.py

test-deploy: setup  ## the docker/, deploy/ and k8s/ tests only
	$(PY) -m pytest -q $(DEPLOY_TESTS)

images:  ## build the images (needs a Docker engine; ./weights must hold real weights, see docs/deploy.md)
	$(DOCKER) build -f docker/gateway.Dockerfile -t $(IMAGE_PREFIX)-gateway:$(IMAGE_TAG) .
	$(DOCKER) build -f docker/triton.Dockerfile --target gpu -t $(IMAGE_PREFIX)-triton:$(IMAGE_TAG)-gpu .
	$(DOCKER) build -f docker/triton.Dockerfile --target cpu -t $(IMAGE_PREFIX)-triton:$(IMAGE_TAG)-cpu .

compose-up:  ## start the one-GPU-host stack (set GRAFANA_ADMIN_PASSWORD first)
	$(DOCKER) compose -f docker/compose.yaml up -d --build

compose-down:  ## stop it (volumes, incl. the engine cache, are kept)
	$(DOCKER) compose -f docker/compose.yaml down
