#!/usr/bin/env bash
# Runs the book's scenarios against a real cluster (kind) with rudder deployed from deploy/.
# The same manifests, expected outputs and gates as conformance/scenarios.rs; only "acting as Kubernetes" is
# replaced by kubectl, and "localhost" by the ingress gateway's address.
#
#   kind create cluster && kubectl apply -f deploy/ && conformance/kind/run.sh
#
# Env: BOOK (manifests dir, default ../shared/book/manifests), GATEWAY (host:port of istio-ingressgateway,
# default: port-forward to svc/istio-ingressgateway on 127.0.0.1:18080).
set -uo pipefail
cd "$(dirname "$0")/../.."
BOOK=${BOOK:-../shared/book/manifests}
NS=micro-shake-factory
FRUITS=fruits.istio-succinctly.io
JUICE=juice-shop.istio-succinctly.io
pass=0; fail=0

if [ -z "${GATEWAY:-}" ]; then
  kubectl -n istio-system port-forward svc/istio-ingressgateway 18080:80 >/dev/null 2>&1 &
  PF=$!; trap 'kill $PF' EXIT
  GATEWAY=127.0.0.1:18080
  sleep 2
fi

result() { # name ok observed
  if [ "$2" = 1 ]; then pass=$((pass+1)); echo "scenario $1: pass (observed $3)"; else fail=$((fail+1)); echo "scenario $1: fail (observed $3)"; fi
}
get() { curl -s -m 20 "http://$GATEWAY$2" -H "Host: $1" "${@:3}"; }
status() { curl -s -o /dev/null -w '%{http_code}' -m 20 "http://$GATEWAY$2" -H "Host: $1" "${@:3}"; }
# Polls until the body equals $3 (config propagation), 30 s at most.
expect() {
  local out=""
  for _ in $(seq 60); do out=$(get "$1" "$2" "${@:4}"); [ "$out" = "$3" ] && break; sleep 0.5; done
  echo "$out"
}
ready() { kubectl -n $NS wait --for=condition=Ready pod --all --timeout=180s >/dev/null; }

kubectl apply -f "$BOOK/chapter-3/fruits-api.yml" >/dev/null && ready
c=$(kubectl get pods -n $NS -o 'jsonpath={.items[*].spec.containers[*].name}')
result "S2 sidecar injection" $([ "$c" = "fruits-api istio-proxy fruits-api istio-proxy" ] && echo 1 || echo 0) "$c"

kubectl apply -f "$BOOK/chapter-3/fruits-api-vs-gw.yml" >/dev/null
o=$(expect $FRUITS /api/fruits/special '{"ver":"1","fruit":"Mango"}'); n=$(status other.istio-succinctly.io /api/fruits/special)
result "S3 gateway + VirtualService" $([ "$o" = '{"ver":"1","fruit":"Mango"}' ] && [ "$n" = 404 ] && echo 1 || echo 0) "$o; wrong Host → $n"

kubectl apply -f "$BOOK/chapter-4-5/juice-shop-api.yml" -f "$BOOK/chapter-4-5/juice-shop-api-vs-gw.yml" >/dev/null && ready
o=$(expect $JUICE /api/juice-shop/hello 'Welcome to the Juice Shop!')
result "S6 juice-shop gateway" $([ "$o" = 'Welcome to the Juice Shop!' ] && echo 1 || echo 0) "$o"

kubectl apply -f "$BOOK/chapter-4-5/fruits-api-vs.yml" >/dev/null
o=$(expect $JUICE /api/juice-shop/blender '{"juice":"kiwi-mandarin juice","price":4.9}' -H 'Content-Type: application/json' -H 'country: au' -d '{"fruits":["kiwi","mandarin"]}')
result "S8 in-mesh service-to-service call" $([ "$o" = '{"juice":"kiwi-mandarin juice","price":4.9}' ] && echo 1 || echo 0) "$o"

kubectl apply -f "$BOOK/chapter-4-5/fruits-api-versioned.yml" -f "$BOOK/chapter-4-5/fruits-api-dr-vs-gw.yml" >/dev/null && ready
expect $FRUITS /api/fruits/special '{"ver":"2","fruit":"Orange"}' -H 'version: 2' >/dev/null
v1=0; v2=0
for _ in $(seq 20); do [ "$(get $FRUITS /api/fruits/special)" = '{"ver":"1","fruit":"Mango"}' ] && v1=$((v1+1)); done
for _ in $(seq 20); do [ "$(get $FRUITS /api/fruits/special -H 'version: 2')" = '{"ver":"2","fruit":"Orange"}' ] && v2=$((v2+1)); done
result "S9 header-based routing" $([ $v1 = 20 ] && [ $v2 = 20 ] && echo 1 || echo 0) "v1 without header $v1/20, v2 with header $v2/20"

# The book's canary weights (v1 90, v2 10); the repository file has them reversed.
sed -e '0,/weight: 10/s//weight: 9X/' -e '0,/weight: 90/s//weight: 10/' -e 's/weight: 9X/weight: 90/' \
  "$BOOK/chapter-4-5/fruits-api-dr-vs-gw-canary.yml" | kubectl apply -f - >/dev/null
sleep 5
v2=0; for _ in $(seq 200); do [ "$(get $FRUITS /api/fruits/special)" = '{"ver":"2","fruit":"Orange"}' ] && v2=$((v2+1)); done
result "S11 canary 90/10" $([ $v2 -ge 6 ] && [ $v2 -le 34 ] && echo 1 || echo 0) "v2=$v2/200 (gate [6,34])"

kubectl apply -f "$BOOK/chapter-4-5/juice-shop-api-vs-gw.yml" >/dev/null; sleep 5
b=0; for _ in $(seq 50); do [ "$(get $JUICE /api/juice-shop/testMyLuck)" = Lucky ] && b=$((b+1)); done
kubectl apply -f "$BOOK/chapter-4-5/juice-shop-api-dr-vs-gw-resilience.yml" >/dev/null; sleep 5
a=0; for _ in $(seq 50); do [ "$(get $JUICE /api/juice-shop/testMyLuck)" = Lucky ] && a=$((a+1)); done
result "S12 resilience" $([ $b -le 20 ] && [ $a -ge 38 ] && echo 1 || echo 0) "Lucky before=$b/50, after=$a/50"

echo "$pass passed, $fail failed"
[ $fail = 0 ]
