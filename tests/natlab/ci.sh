#!/usr/bin/env bash
# The NAT lab's CI entry point (run as root from anywhere): builds the keywire binary, probes
# every router kind, runs the short scenario table. Exits non-zero on any failed expectation;
# never skips (not root, or a missing tool, is a failure).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" -ne 0 ]; then
  echo "natlab: needs root (network namespaces, nftables)"; exit 1
fi
for tool in ip nft conntrack python3; do
  command -v "$tool" >/dev/null || { echo "natlab: $tool missing (see .ci/apt-packages.txt)"; exit 1; }
done
# The dialkey scenarios run MQTT brokers (the Debian package installs it in /usr/sbin).
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] \
  || { echo "natlab: mosquitto missing (see .ci/apt-packages.txt)"; exit 1; }
[ -e /dev/net/tun ] || { echo "natlab: /dev/net/tun missing (the delay line needs TUN)"; exit 1; }
t0=$SECONDS
cargo build -p keywire-cli
echo "natlab: keywire built in $((SECONDS - t0)) s"
exec python3 tests/natlab/lab.py ci --binary target/debug/keywire "$@"
