# Sourced by the scripts that install their own tools (nothing is committed, nothing global
# but Debian packages):
#   pip_tool DIR PACKAGE==VERSION  installs a pinned PyPI package into the git-ignored DIR
#   deb_tool COMMAND PACKAGE       installs a Debian package when COMMAND is missing
pip_tool() {
  local dir=$1 spec=$2
  echo "installing $spec into ${dir#"$root/"} (PyPI)" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$dir" "$spec" >&2
}

deb_tool() {
  local cmd=$1 package=$2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  echo "installing Debian's $package (apt-get)" >&2
  apt-get install -y -q "$package" >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q "$package" >/dev/null; }
}
