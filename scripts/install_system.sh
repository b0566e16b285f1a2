#!/usr/bin/env bash
# System packages the tests need: the GStreamer RTSP server (run by the system Python through gi)
# that the RTSP tests stream from, ffmpeg, and Chromium for the browser tests.
# Safe to run again: it installs only what is missing. Runs as root, or through sudo when not root.
set -euo pipefail

packages=(
    python3-gi
    python3-gst-1.0
    gir1.2-gst-rtsp-server-1.0
    gstreamer1.0-plugins-base
    gstreamer1.0-plugins-good
    gstreamer1.0-plugins-bad
    gstreamer1.0-plugins-ugly
    gstreamer1.0-rtsp
    gstreamer1.0-tools
    ffmpeg
    chromium
)

missing=()
for package in "${packages[@]}"; do
    # dpkg-query prints "install ok installed" only for a fully installed package.
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install_system: all system packages already installed"
    exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install_system: run as root or install sudo to install: ${missing[*]}" >&2; exit 1; }
    as_root=(sudo)
fi

# apt verifies signatures as the unprivileged _apt user in $TMPDIR; give it a directory it can write
# even where /tmp is not world-writable.
apt_tmp=$(mktemp -d)
chmod 1777 "$apt_tmp"
trap 'rm -rf "$apt_tmp"' EXIT
apt=("${as_root[@]}" env TMPDIR="$apt_tmp" DEBIAN_FRONTEND=noninteractive apt-get)

echo "install_system: installing ${missing[*]}"
"${apt[@]}" update -q
"${apt[@]}" install -y -q --no-install-recommends "${missing[@]}"

# Fail here, not in the tests, when the RTSP server cannot be built from what was installed.
/usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
echo "install_system: done"
