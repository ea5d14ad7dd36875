# Fleet: several Triton replicas behind the gateway (gateway/fleet.py, k8s/README.md).
#   make bench-fleet                  1/2/3 stand-in replicas on loopback, pick_first vs
#                                     round_robin vs least_outstanding, one run
FLEET_SECONDS ?= 10

.PHONY: bench-fleet

bench-fleet: setup  ## img/s through the gateway with 1-3 Triton replicas per balancer; scaling efficiency
	$(PY) -m perf.bench_fleet --seconds $(FLEET_SECONDS)
