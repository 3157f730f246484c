# Sourced by the benches (scripts/bench, scripts/bench-sandboxes), not run: put the cagerun
# to measure into DIR in the installed layout (scripts/install) — DIR/libexec/cagerun/cagerun,
# the full binary, and DIR/bin/cagerun, the small front, where there is one. $CAGERUN may name
# either binary of an install, or a lone full binary (an older build: it is its own front and
# shim); without it, scripts/install builds a static release into DIR/prefix.
# Sets cagerun_full and cagerun_front ("" without a front).
cagerun_layout() { # DIR
  local dir=$1 full front
  if [ -n "${CAGERUN:-}" ]; then
    case "$CAGERUN" in
      */libexec/cagerun/cagerun) full="$CAGERUN"; front="${CAGERUN%/libexec/cagerun/cagerun}/bin/cagerun" ;;
      */bin/cagerun) front="$CAGERUN"; full="${CAGERUN%/bin/cagerun}/libexec/cagerun/cagerun"
        [ -f "$full" ] || { full="$CAGERUN"; front=""; } ;;
      *) full="$CAGERUN"; front="" ;;
    esac
  else
    PREFIX="$dir/prefix" scripts/install >/dev/null
    full="$dir/prefix/libexec/cagerun/cagerun"; front="$dir/prefix/bin/cagerun"
  fi
  install -D -m 755 "$full" "$dir/libexec/cagerun/cagerun"
  chmod 755 "$dir/libexec" "$dir/libexec/cagerun"
  cagerun_full="$dir/libexec/cagerun/cagerun"
  cagerun_front=""
  if [ -n "$front" ] && [ -f "$front" ] && ! [ "$front" -ef "$full" ]; then
    install -D -m 755 "$front" "$dir/bin/cagerun"
    chmod 755 "$dir/bin"
    cagerun_front="$dir/bin/cagerun"
  fi
}
