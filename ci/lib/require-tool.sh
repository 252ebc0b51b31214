# shellcheck shell=bash
# Sourced by the pipeline's cluster scripts: `require_tool SCRIPT TOOL...` stops with exit 2
# and the command that installs the first missing tool on a Linux amd64 agent.
# Versions: the kind node image in ci/kind-config.yaml and the charts in ci/helm_install.sh
# were checked with these.
require_tool() {
  local script=$1 tool how
  shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null && continue
    case $tool in
      kind) how='curl -fsSLo /usr/local/bin/kind https://kind.sigs.k8s.io/dl/v0.24.0/kind-linux-amd64 && chmod +x /usr/local/bin/kind' ;;
      kubectl) how='curl -fsSLo /usr/local/bin/kubectl https://dl.k8s.io/release/v1.31.2/bin/linux/amd64/kubectl && chmod +x /usr/local/bin/kubectl' ;;
      helm) how='curl -fsSL https://get.helm.sh/helm-v3.16.2-linux-amd64.tar.gz | tar -xz -C /usr/local/bin --strip-components=1 linux-amd64/helm' ;;
      docker) how='apt-get install docker.io (and add the Jenkins user to the docker group)' ;;
      *) how="install $tool" ;;
    esac
    echo "$script: $tool is not installed on this agent; install it with:" >&2
    echo "  $how" >&2
    exit 2
  done
}
