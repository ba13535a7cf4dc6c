#!/usr/bin/env bash
# The real-cluster end-to-end run: a kind cluster, the image built and loaded, the chart installed,
# the documentation's example endpoints applied, Ready awaited, and the REST API called.
# Needs: docker, kind, kubectl, helm, and internet access from the cluster (models download from the hub).
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=${CLUSTER:-infernetes}
IMAGE_REPO=${IMAGE_REPO:-infernetes}
IMAGE_TAG=${IMAGE_TAG:-e2e}
NS=${NS:-infernetes-system}

if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --config kind-config.yaml --name "$CLUSTER"
fi
make image IMAGE="$IMAGE_REPO:$IMAGE_TAG" CONTAINER_ENGINE=docker
kind load docker-image "$IMAGE_REPO:$IMAGE_TAG" --name "$CLUSTER"
helm upgrade --install infernetes helm/infernetes --namespace "$NS" --create-namespace --wait \
  --set image.repository="$IMAGE_REPO" --set image.tag="$IMAGE_TAG" --set image.pullPolicy=Never \
  --set workers.nodeSelector."infernetes\.dev/pool"=inference
kubectl apply -n "$NS" -f examples/endpoints/03-e5.yaml -f examples/endpoints/06-use-existing-deployment.yaml
kubectl wait -n "$NS" --for=condition=Ready ie/my-e5-model ie/use-existing-deployment --timeout=20m
kubectl get ie,mdep -n "$NS"

kubectl port-forward -n "$NS" svc/infernetes 19200:9200 >/dev/null 2>&1 &
FORWARD=$!
trap 'kill $FORWARD' EXIT
sleep 3
API_KEY=$(kubectl get secret -n "$NS" infernetes-api-keys -o jsonpath='{.data.encoded}' | base64 -d)
curl -fsS -H "Authorization: ApiKey $API_KEY" -H 'Content-Type: application/json' \
  http://127.0.0.1:19200/_inference/text_embedding/my-e5-model -d '{"input": ["hello world"]}' | head -c 200; echo

INFERNETES_E2E_URL=http://127.0.0.1:19200 INFERNETES_E2E_API_KEY="$API_KEY" INFERNETES_E2E_NAMESPACE="$NS" \
  .venv/bin/pytest tests/e2e -v
