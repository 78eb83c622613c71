#!/usr/bin/env bash
# System packages the project uses, installed with apt-get when missing (Debian/Ubuntu).
#   required: Java 17 (Spark), the Python 3.11 venv module
#   checks:   dicom3tools (dciodvfy validates written DICOM), chromium (renders the HTML report)
#   PACS:     orthanc with its DICOMweb and Web Viewer plugins (delivery tests, make demo, make ui),
#             dcmtk (storescu/findscu/dcmdump, to look at a PACS by hand)
# Without root or apt-get, a missing required package stops with a message saying what to install.
set -euo pipefail

JAVA_HOME="${JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}"
missing=()
[ -x "$JAVA_HOME/bin/java" ] || missing+=(openjdk-17-jre-headless)
python3.11 -c "import ensurepip, venv" 2>/dev/null || missing+=(python3.11-venv)
command -v dciodvfy >/dev/null || missing+=(dicom3tools)
command -v chromium >/dev/null || missing+=(chromium)
[ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
[ -e /usr/share/orthanc/plugins/libOrthancWebViewer.so ] || missing+=(orthanc-webviewer)
command -v storescu >/dev/null || missing+=(dcmtk)

if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: ok (java at $JAVA_HOME, dciodvfy, chromium, orthanc with dicomweb and webviewer, dcmtk)"
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
# The orthanc package enables a system service on port 4242/8042; the project starts its own
# instances on free ports (scripts/pacs.py), so the service is stopped where one was started.
if command -v systemctl >/dev/null && systemctl is-active --quiet orthanc 2>/dev/null; then
  $SUDO systemctl stop orthanc || true
fi
if [ ! -x "$JAVA_HOME/bin/java" ]; then
  echo "error: Java 17 not found at JAVA_HOME=$JAVA_HOME after install; set JAVA_HOME to a Java 17 home" >&2
  exit 1
fi
echo "system packages: installed ${missing[*]}"
