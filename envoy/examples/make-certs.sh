#!/bin/sh
# Makes a throwaway CA, a server certificate for the local Envoy and two
# client certificates carrying SPIFFE IDs, for the mutual-TLS egress example
# (README "Example: an egress gateway") and its integration test.
#
#   make-certs.sh OUT_DIR [TRUST_DOMAIN]
#
# OUT_DIR gets ca.pem, server.pem/server.key (api.github.com, httpbingo.org,
# localhost, 127.0.0.1) and team-a.pem/team-a.key, team-b.pem/team-b.key
# (spiffe://TRUST_DOMAIN/ns/team-X/sa/team-X). Keys are P-256, valid one day.
set -eu
out=${1:?usage: make-certs.sh OUT_DIR [TRUST_DOMAIN]}
trust_domain=${2:-cluster.local}
mkdir -p "$out"
cd "$out"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null; }

key ca
openssl req -x509 -new -key ca.key -out ca.pem -days 1 -subj "/CN=policy-engine test CA" \
  -addext "basicConstraints=critical,CA:true" -addext "keyUsage=critical,keyCertSign"

# issue NAME SUBJECT_ALT_NAME EXTENDED_KEY_USAGE
issue() {
  key "$1"
  openssl req -new -key "$1.key" -subj "/CN=$1" -out "$1.csr"
  printf 'subjectAltName=%s\nextendedKeyUsage=%s\nbasicConstraints=CA:false\n' "$2" "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
    -days 1 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm "$1.csr" "$1.ext"
}

issue server "DNS:api.github.com,DNS:httpbingo.org,DNS:localhost,IP:127.0.0.1" serverAuth
for team in team-a team-b; do
  issue "$team" "URI:spiffe://$trust_domain/ns/$team/sa/$team" clientAuth
done
rm -f ca.srl
