#!/usr/bin/env bash
# System packages the project uses, installed with apt-get when missing (Debian/Ubuntu).
#   required: Java 17 (Spark), the Python 3.11 venv module
#   checks:   dicom3tools (dciodvfy validates written DICOM), chromium (renders the HTML report)
# Without root or apt-get, a missing required package stops with a message saying what to install.
set -euo pipefail

JAVA_HOME="${JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}"
missing=()
[ -x "$JAVA_HOME/bin/java" ] || missing+=(openjdk-17-jre-headless)
python3.11 -c "import ensurepip, venv" 2>/dev/null || missing+=(python3.11-venv)
command -v dciodvfy >/dev/null || missing+=(dicom3tools)
command -v chromium >/dev/null || missing+=(chromium)

if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: ok (java at $JAVA_HOME, dciodvfy, chromium)"
  exit 0
fi

echo "system packages missing: ${missing[*]}"
if ! command -v apt-get >/dev/null; then
  echo "error: apt-get not found; install these by hand: ${missing[*]} (and set JAVA_HOME to a Java 17)" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "error: installing ${missing[*]} needs root: run 'sudo apt-get install -y ${missing[*]}' then retry" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
if [ ! -x "$JAVA_HOME/bin/java" ]; then
  echo "error: Java 17 not found at JAVA_HOME=$JAVA_HOME after install; set JAVA_HOME to a Java 17 home" >&2
  exit 1
fi
echo "system packages: installed ${missing[*]}"
