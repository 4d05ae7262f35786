#!/bin/bash
# Stand-in for kubectl on the control plane, for the provider-credentials script: it records every
# call, keeps what `apply -f -` receives, answers admin.conf's cluster fields, and plays the token
# controller, which fills the token Secret in after STAND_IN_TOKEN_DELAY empty reads ("never": never);
# its API server answers /readyz after STAND_IN_API_DOWN failed asks (0 unless set).
set -euo pipefail
state=${STAND_IN_STATE:?}
printf '%s\n' "$*" >> "${state}/calls"
if [[ "${1:-} ${2:-}" != "--kubeconfig /etc/kubernetes/admin.conf" ]]; then
  echo "stand-in kubectl: expected --kubeconfig /etc/kubernetes/admin.conf first, got: $*" >&2
  exit 2
fi
shift 2
case "$*" in
  "get --raw /readyz")
    asks=$(( $(cat "${state}/readyz" 2>/dev/null || echo 0) + 1 ))
    echo "${asks}" > "${state}/readyz"
    [[ "${asks}" -gt "${STAND_IN_API_DOWN:-0}" ]] || { echo "connection refused" >&2; exit 1; } ;;
  "apply -f -")
    cat >> "${state}/applied.yaml"
    touch "${state}/applied" ;;
  'config view --raw --minify -o jsonpath={.clusters[0].name}{"\n"}{.clusters[0].cluster.server}{"\n"}{.clusters[0].cluster.certificate-authority-data}{"\n"}')
    printf '%s\n' "${STAND_IN_CLUSTER:?}" "${STAND_IN_SERVER:?}" "${STAND_IN_CA:?}" ;;
  "--namespace ${STAND_IN_SECRET_NAMESPACE:?} get secret ${STAND_IN_SECRET:?} -o jsonpath={.data.token}")
    if [[ ! -e "${state}/applied" ]]; then
      echo "Error from server (NotFound): secrets \"${STAND_IN_SECRET}\" not found" >&2
      exit 1
    fi
    reads=$(( $(cat "${state}/reads" 2>/dev/null || echo 0) + 1 ))
    echo "${reads}" > "${state}/reads"
    if [[ "${STAND_IN_TOKEN_DELAY:?}" != never && "${reads}" -gt "${STAND_IN_TOKEN_DELAY}" ]]; then
      printf '%s' "${STAND_IN_TOKEN:?}" | base64 -w0
    fi ;;
  *)
    echo "stand-in kubectl: unexpected call: $*" >&2
    exit 2 ;;
esac
