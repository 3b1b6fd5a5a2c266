#!/usr/bin/env bash
# Set up a Debian 12 host (laptop, VM or CI runner, as root) for kiln: the container tools kiln
# drives, gitlab-ci-local for running the CI templates locally, and kiln itself (editable).
# Idempotent; safe to run again. Needs only Debian's, PyPI's and npm's package registries.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

APT_PACKAGES=(
  buildah skopeo docker-registry        # build, copy, and the embedded/local registry
  qemu-user-static busybox-static       # foreign-arch builds, tiny offline base image
  debootstrap                           # offline Debian base image for the Python images
  rsync git openssl ca-certificates     # gitlab-ci-local needs rsync; tests make TLS certs
  apache2-utils                         # htpasswd for the Basic-auth registry tests
  cpp                                   # GNU cpp: the reference the preprocessor tests compare with
  nodejs npm                            # gitlab-ci-local
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# nodejs/npm may come from elsewhere (e.g. nodesource); only install them when absent.
if command -v node >/dev/null && command -v npm >/dev/null; then
  filtered=(); for p in "${missing[@]}"; do [[ $p == nodejs || $p == npm ]] || filtered+=("$p"); done
  missing=("${filtered[@]}")
fi
if [ "${#missing[@]}" -gt 0 ]; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# gitlab-ci-local 4.73.0 is the last release that runs on Node 20.
if ! command -v gitlab-ci-local >/dev/null || [ "$(gitlab-ci-local --version 2>/dev/null)" != "4.73.0" ]; then
  $SUDO npm install -g --no-fund --no-audit gitlab-ci-local@4.73.0
fi

python3 -m pip install -q --disable-pip-version-check -e ".[test]"
echo "kiln host set-up done: $(buildah --version | head -1); $(skopeo --version); gitlab-ci-local $(gitlab-ci-local --version)"
