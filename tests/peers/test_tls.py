"""TLS: interception in forward mode, --listen-tls, upstream wss with verification, the CA and key log.
Upstream servers use certs/test (a test-only CA, see scripts/make-test-certs.sh); clients trust wstap's
CA, which each test creates in its own temporary directory."""
import asyncio
import os
import socket
import ssl
import stat
import subprocess
from pathlib import Path

from websockets.asyncio.client import connect

from conftest import PEERS, PYTHON, WSTAP, messages
from rawpeers import recv_until_closed

TEST_CA = Path(__file__).resolve().parents[2] / "certs" / "test" / "test-ca.pem"


def client_context(cafile):
    return ssl.create_default_context(cafile=str(cafile))


async def talk(url, cafile, proxy=None, texts=("hello over wss",)):
    async with connect(url, ssl=client_context(cafile), proxy=proxy) as ws:
        echoes = []
        for text in texts:
            await ws.send(text)
            echoes.append(await ws.recv())
        await ws.send(b"\x00\x01binary")
        echoes.append(await ws.recv())
        return echoes


def start_tls_server(peer):
    return peer(PYTHON, str(PEERS / "websockets_tls_echo_server.py"))


def test_forward_proxy_intercepts_wss_with_a_minted_certificate(wstap, peer, tmp_path):
    port = start_tls_server(peer)
    ca = tmp_path / "ca"
    proxy = wstap(None, ["--ca-dir", str(ca), "--upstream-ca", str(TEST_CA)])
    echoes = asyncio.run(talk(f"wss://localhost:{port}/secure?x=1", ca / "wstap-ca.pem", proxy=f"http://127.0.0.1:{proxy.port}"))
    assert echoes == ["hello over wss", b"\x00\x01binary"]
    records = proxy.wait_ended()
    open_ = [r for r in records if r["type"] == "open"][0]
    assert open_["url"] == f"wss://localhost:{port}/secure?x=1"
    assert open_["server"] == f"127.0.0.1:{port}"
    assert open_["client_tls"] == {"sni": "localhost"}
    assert open_["upstream_tls"] == {"sni": "localhost", "verified": True}
    sent = [(m["from"], m.get("text", m.get("base64"))) for m in messages(records) if m["opcode"] in (1, 2)]
    assert sent == [("client", "hello over wss"), ("server", "hello over wss"), ("client", "AAFiaW5hcnk="), ("server", "AAFiaW5hcnk=")]


def test_forward_proxy_intercepts_an_ip_literal_target_without_sni(wstap, peer, tmp_path):
    port = start_tls_server(peer)
    ca = tmp_path / "ca"
    proxy = wstap(None, ["--ca-dir", str(ca), "--upstream-ca", str(TEST_CA)])
    echoes = asyncio.run(talk(f"wss://127.0.0.1:{port}/ip", ca / "wstap-ca.pem", proxy=f"http://127.0.0.1:{proxy.port}"))
    assert echoes[0] == "hello over wss"
    open_ = [r for r in proxy.wait_ended() if r["type"] == "open"][0]
    assert open_["client_tls"] == {"sni": None} and open_["upstream_tls"]["sni"] is None


def test_reverse_mode_listen_tls_to_a_wss_upstream(wstap, peer, tmp_path):
    port = start_tls_server(peer)
    ca = tmp_path / "ca"
    proxy = wstap(f"wss://localhost:{port}", ["--listen-tls", "--ca-dir", str(ca), "--upstream-ca", str(TEST_CA)])
    assert asyncio.run(talk(f"wss://127.0.0.1:{proxy.port}/by-ip", ca / "wstap-ca.pem"))[0] == "hello over wss"
    assert asyncio.run(talk(f"wss://localhost:{proxy.port}/by-name", ca / "wstap-ca.pem"))[0] == "hello over wss"
    records = proxy.wait_ended(2)
    urls = sorted(r["url"] for r in records if r["type"] == "open")
    assert urls == [f"wss://localhost:{port}/by-ip", f"wss://localhost:{port}/by-name"]
    # The client's own SNI, as it sent it: none for an IP address, the name otherwise.
    sni = {r["url"].rsplit("/", 1)[1]: r["client_tls"] for r in records if r["type"] == "open"}
    assert sni == {"by-ip": {"sni": None}, "by-name": {"sni": "localhost"}}


def test_untrusted_upstream_certificate_gets_a_502_with_the_reason(wstap, peer, tmp_path):
    port = start_tls_server(peer)
    proxy = wstap(f"wss://localhost:{port}", ["--ca-dir", str(tmp_path / "ca")])  # test CA not trusted
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    response = recv_until_closed(client)
    assert response.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert b"not trusted" in response and b"--upstream-ca" in response
    end = [r for r in proxy.wait_ended() if r["type"] == "end"][0]
    assert "CERTIFICATE_VERIFY_FAILED" in end["reason"]


def test_insecure_skips_verification_and_says_so(wstap, peer, tmp_path):
    port = start_tls_server(peer)
    proxy = wstap(f"wss://127.0.0.1:{port}", ["--insecure"])

    async def plain_client():
        async with connect(f"ws://127.0.0.1:{proxy.port}/ins") as ws:
            await ws.send("unverified")
            return await ws.recv()

    assert asyncio.run(plain_client()) == "unverified"
    open_ = [r for r in proxy.wait_ended() if r["type"] == "open"][0]
    assert open_["upstream_tls"] == {"sni": None, "verified": False}
    proxy.wait_for(r"--insecure: upstream certificates are NOT verified")


def test_passthrough_hosts_are_tunnelled_untouched(wstap, peer, tmp_path):
    port = start_tls_server(peer)
    proxy = wstap(None, ["--ca-dir", str(tmp_path / "ca"), "--passthrough", "local*"])
    # The client trusts only the upstream's real CA: it works only if wstap did not intercept.
    echoes = asyncio.run(talk(f"wss://localhost:{port}/pass", TEST_CA, proxy=f"http://127.0.0.1:{proxy.port}"))
    assert echoes[0] == "hello over wss"
    records = proxy.wait_ended()
    assert [r for r in records if r["type"] in ("open", "message")] == []


def openssl_through_proxy(proxy_port, target, ca_file, extra):
    """openssl s_client tunnels with CONNECT (-proxy) and verifies what wstap presents."""
    return subprocess.run(
        ["openssl", "s_client", "-proxy", f"127.0.0.1:{proxy_port}", "-connect", target, "-CAfile", str(ca_file),
         "-verify_return_error", "-showcerts", *extra],
        input="", capture_output=True, text=True, timeout=60)


def test_minted_chain_and_sans_verify_with_openssl(wstap, tmp_path):
    ca = tmp_path / "ca"
    proxy = wstap(None, ["--ca-dir", str(ca)])
    by_name = openssl_through_proxy(proxy.port, "upstream.wstap.test:443", ca / "wstap-ca.pem",
                                    ["-servername", "upstream.wstap.test", "-verify_hostname", "upstream.wstap.test", "-alpn", "h2,http/1.1"])
    assert "Verify return code: 0 (ok)" in by_name.stdout, by_name.stdout + by_name.stderr
    assert "ALPN protocol: http/1.1" in by_name.stdout  # h2 offered, http/1.1 chosen: upgrades stay on HTTP/1.1
    by_ip = openssl_through_proxy(proxy.port, "127.0.0.1:9", ca / "wstap-ca.pem", ["-noservername", "-verify_ip", "127.0.0.1"])
    assert "Verify return code: 0 (ok)" in by_ip.stdout, by_ip.stdout + by_ip.stderr

    # The leaf itself: SAN, not a CA, and `openssl verify` against wstap's CA.
    leaf_pem = by_name.stdout.split("-----BEGIN CERTIFICATE-----", 1)[1].split("-----END CERTIFICATE-----", 1)[0]
    leaf = tmp_path / "leaf.pem"
    leaf.write_text("-----BEGIN CERTIFICATE-----" + leaf_pem + "-----END CERTIFICATE-----\n")
    text = subprocess.run(["openssl", "x509", "-in", str(leaf), "-noout", "-text"], capture_output=True, text=True).stdout
    assert "DNS:upstream.wstap.test" in text and "CA:FALSE" in text and "TLS Web Server Authentication" in text
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(ca / "wstap-ca.pem"), str(leaf)], capture_output=True, text=True)
    assert verify.stdout.strip().endswith(": OK"), verify.stdout + verify.stderr


def test_ca_is_private_and_exports_pem_and_der(tmp_path):
    ca = tmp_path / "ca"
    shown = subprocess.run([WSTAP, "ca", "--ca-dir", str(ca)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and str(ca) in shown.stdout
    assert stat.S_IMODE(os.stat(ca).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(ca / "wstap-ca-key.pem").st_mode) == 0o600
    pem, der = tmp_path / "ca.pem", tmp_path / "ca.der"
    exported = subprocess.run([WSTAP, "ca", "--ca-dir", str(ca), "--export-pem", str(pem), "--export-der", str(der)], capture_output=True, text=True)
    assert exported.returncode == 0
    assert pem.read_text() == (ca / "wstap-ca.pem").read_text()
    from_der = subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(der), "-noout", "-text"], capture_output=True, text=True).stdout
    assert "CA:TRUE" in from_der and "Certificate Sign" in from_der
    # A second run loads the same CA instead of making a new one.
    again = subprocess.run([WSTAP, "ca", "--ca-dir", str(ca), "--export-pem", "-"], capture_output=True, text=True)
    assert again.stdout == pem.read_text()


def test_ca_files_have_their_modes_whatever_the_umask(tmp_path):
    """Under umask 000 the certificate is 0644 (not 0666), the key 0600 and the directory 0700."""
    ca = tmp_path / "ca"
    pem = tmp_path / "exported.pem"
    made = subprocess.run([WSTAP, "ca", "--ca-dir", str(ca), "--export-pem", str(pem)], capture_output=True, text=True,
                          timeout=60, preexec_fn=lambda: os.umask(0))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(os.stat(ca).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(ca / "wstap-ca-key.pem").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(ca / "wstap-ca.pem").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(pem).st_mode) == 0o644


def test_keylog_has_secrets_for_both_legs(wstap, peer, tmp_path):
    port = start_tls_server(peer)
    ca, keys = tmp_path / "ca", tmp_path / "keys.log"
    proxy = wstap(None, ["--ca-dir", str(ca), "--upstream-ca", str(TEST_CA), "--keylog", str(keys)])
    asyncio.run(talk(f"wss://localhost:{port}/k", ca / "wstap-ca.pem", proxy=f"http://127.0.0.1:{proxy.port}"))
    proxy.wait_ended()
    lines = keys.read_text().splitlines()
    randoms = {line.split()[1] for line in lines if line.startswith("CLIENT_HANDSHAKE_TRAFFIC_SECRET")}
    assert len(randoms) == 2, lines  # one TLS 1.3 handshake with the client, one with the upstream
    assert all(len(line.split()) == 3 for line in lines)


def test_readme_app_workflow_https_proxy_and_ssl_cert_file(wstap, peer, tmp_path):
    """README "Debug an app over wss": the app only gets HTTPS_PROXY and SSL_CERT_FILE."""
    port = start_tls_server(peer)
    ca = tmp_path / "ca"
    proxy = wstap(None, ["--ca-dir", str(ca), "--upstream-ca", str(TEST_CA)])
    app = f"""
import asyncio
from websockets.asyncio.client import connect
async def main():
    async with connect("wss://localhost:{port}/app") as ws:
        await ws.send("from the app")
        print(await ws.recv())
asyncio.run(main())
"""
    env = {**os.environ, "HTTPS_PROXY": f"http://127.0.0.1:{proxy.port}", "SSL_CERT_FILE": str(ca / "wstap-ca.pem")}
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    result = subprocess.run([PYTHON, "-c", app], env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "from the app", result.stderr
    records = proxy.wait_ended()
    assert [m["text"] for m in messages(records, sender="client") if m["opcode"] == 1] == ["from the app"]


def test_ip_literal_upstream_must_have_a_matching_ip_san(wstap, peer, tmp_path):
    """A certificate from a trusted CA that names only a DNS host is refused for an IP-literal upstream."""
    certs = TEST_CA.parent
    key, csr, cert, ext = (tmp_path / n for n in ("k.pem", "c.csr", "c.pem", "c.ext"))
    ext.write_text("subjectAltName=DNS:only-a-name.wstap.test\nextendedKeyUsage=serverAuth\n")
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)], check=True)
    subprocess.run(["openssl", "req", "-new", "-key", str(key), "-subj", "/CN=only-a-name.wstap.test", "-out", str(csr)], check=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(certs / "test-ca.pem"), "-CAkey", str(certs / "test-ca-key.pem"),
                    "-CAcreateserial", "-CAserial", str(tmp_path / "serial"), "-days", "2", "-extfile", str(ext), "-out", str(cert)],
                   check=True, capture_output=True)
    port = peer(PYTHON, str(PEERS / "websockets_tls_echo_server.py"), str(cert), str(key))
    proxy = wstap(f"wss://127.0.0.1:{port}", ["--upstream-ca", str(TEST_CA)])
    client = socket.create_connection(("127.0.0.1", proxy.port))
    client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    response = recv_until_closed(client)
    assert response.startswith(b"HTTP/1.1 502 Bad Gateway"), response
    assert b"not valid for the name or IP address" in response  # NIOSSL matches the peer IP against IP SANs
