#!/usr/bin/env bash
# Add <codename>-backports to apt, derived from the image's own Debian source entry (its URI and
# keyring), the same way infra/setup.sh does on a host. No archive host name is written here.
set -euo pipefail
. /etc/os-release
codename=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
if grep -rqs "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then exit 0; fi
uri=""; keyring=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  uri=$(awk -v c="$codename" '
    BEGIN{RS=""; FS="\n"}
    { u=""; s=""; k="";
      for(i=1;i<=NF;i++){
        if($i ~ /^URIs:/){u=$i; sub(/^URIs:[ \t]*/,"",u); split(u,a," "); u=a[1]}
        if($i ~ /^Suites:/){s=" " $i " "}
        if($i ~ /^Signed-By:/){k=$i; sub(/^Signed-By:[ \t]*/,"",k)}
      }
      if(u!="" && index(s," " c " ")>0 && u !~ /security/){print u "|" k; exit}
    }' "$f")
  [ -n "$uri" ] && break
done
if [ -n "$uri" ]; then
  keyring=${uri#*|}; uri=${uri%%|*}
elif [ -f /etc/apt/sources.list ]; then
  uri=$(awk -v c="$codename" '$1=="deb" && $0 !~ /security/ { for(i=2;i<=NF;i++) if($i ~ /^[a-z]+:\/\//){ if($(i+1)==c){print $i; exit} } }' /etc/apt/sources.list)
fi
[ -n "$uri" ] || { echo "no Debian source entry for ${codename} to derive backports from" >&2; exit 1; }
{
  echo "Types: deb"; echo "URIs: ${uri}"; echo "Suites: ${codename}-backports"; echo "Components: main"
  [ -n "$keyring" ] && echo "Signed-By: ${keyring}"
} > "/etc/apt/sources.list.d/vmsave-${codename}-backports.sources"
echo "added ${codename}-backports"
