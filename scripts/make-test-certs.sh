#!/usr/bin/env bash
# Makes the TEST-ONLY certificate authority in certs/test/ that the test suite's upstream servers use
# (their certificates are signed by it; wstap trusts it with --upstream-ca). Never trust it anywhere else:
# its private key is committed on purpose. wstap's own interception CA is separate and per user.
set -euo pipefail
dir="$(cd "$(dirname "$0")/.." && pwd)/certs/test"
mkdir -p "$dir"
cd "$dir"
openssl ecparam -name prime256v1 -genkey -noout -out test-ca-key.pem
openssl req -x509 -new -key test-ca-key.pem -sha256 -days 3650 -subj "/O=wstap tests/CN=wstap TEST-ONLY upstream CA" \
  -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" -out test-ca.pem
openssl ecparam -name prime256v1 -genkey -noout -out upstream-key.pem
openssl req -new -key upstream-key.pem -subj "/O=wstap tests/CN=localhost" -out upstream.csr
cat > upstream.ext <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:upstream.wstap.test,IP:127.0.0.1,IP:::1
EXT
openssl x509 -req -in upstream.csr -CA test-ca.pem -CAkey test-ca-key.pem -CAcreateserial -days 3650 -sha256 \
  -extfile upstream.ext -out upstream.pem
rm -f upstream.csr upstream.ext test-ca.srl
echo "test certificates written to $dir"
