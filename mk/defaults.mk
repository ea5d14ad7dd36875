# Variables several make files share, declared once. Empty means "the tool's own default":
# ports and addresses come from contract/defaults.py, seconds per measured point from each
# benchmark's --seconds default (bench-gateway 10, bench-models 20), so no value is stated
# twice. Set any of them on the command line: make serve GRPC_PORT=9001.
TRITON_HOST ?=
HTTP_PORT ?=
GRPC_PORT ?=
METRICS_PORT ?=
GATEWAY_HOST ?=
GATEWAY_PORT ?=
GATEWAY_METRICS_PORT ?=
TRITON_GRPC ?=
TRITON_METRICS ?=
GATEWAY_URL ?=
BENCH_SECONDS ?=

# $(call opt,--flag,$(VAR)): "--flag VALUE" when VAR is set, nothing otherwise
opt = $(if $(strip $(2)),$(1) $(strip $(2)))
