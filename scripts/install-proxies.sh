#!/usr/bin/env bash
# Installs the proxies the forward-auth tests run for real, from Debian:
# nginx (nginx-light has the auth_request module) and Caddy. The tests look
# for them on PATH and in /usr/sbin.
set -euo pipefail

found() { command -v "$1" > /dev/null || [ -x "/usr/sbin/$1" ]; }
need=()
found nginx || need+=(nginx-light)
found caddy || need+=(caddy)
if [ ${#need[@]} -eq 0 ]; then
  echo "nginx and caddy already installed"
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
# Debian starts nginx on port 80 where it can; the tests run their own.
$sudo service nginx stop > /dev/null 2>&1 || true
