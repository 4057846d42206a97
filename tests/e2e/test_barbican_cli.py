"""``openstack secret ...`` and ``openstack acl ...`` (python-barbicanclient's OSC plugin) word for word against Cohort.

Cohort runs on noop drivers without Keystone. The key-manager commands reach it the way
python-barbicanclient reaches a Barbican without Keystone: ``OS_AUTH_TYPE=none`` and
``OS_ENDPOINT`` naming the API's ``/v1`` (the plugin has no endpoint option of its own; it asks
the session for the ``key-manager`` endpoint, which the ``none`` auth type answers with
``OS_ENDPOINT``). The load-balancer commands use the server's root, as everywhere else. Each
block is a bash script, so ``$(...)`` and ``awk`` run as in Octavia's TLS cookbook.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

MAKE_CERTS = """
openssl req -x509 -newkey rsa:2048 -nodes -keyout server.key -out server.crt -days 2 \
  -subj "/CN=www.example.com" 2>/dev/null
openssl pkcs12 -export -inkey server.key -in server.crt -passout pass: -out server.p12
"""


def sh(script: str, base: str, env: dict[str, str], cwd: Path, key_manager: bool = True) -> str:
    """Run ``script`` in bash with the ``openstack`` CLI of this checkout, as a user would paste it."""
    endpoint = f"{base}/v1" if key_manager else base
    full_env = {**env, "OS_AUTH_TYPE": "none", "OS_ENDPOINT": endpoint,
                "PATH": f"{Path(env.get('VIRTUAL_ENV', '')) / 'bin'}:{env['PATH']}"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=full_env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, openstack_bin: str, client_env: dict[str, str]) -> Path:
    path: Path = tmp_path_factory.mktemp("barbican-cli")
    env = {**client_env, "VIRTUAL_ENV": str(Path(openstack_bin).parent.parent)}
    subprocess.run(["bash", "-euo", "pipefail", "-c", MAKE_CERTS], cwd=path, env=env, check=True, timeout=60)
    return path


@pytest.fixture(scope="module")
def env(openstack_bin: str, client_env: dict[str, str]) -> dict[str, str]:
    return {**client_env, "VIRTUAL_ENV": str(Path(openstack_bin).parent.parent)}


def test_secret_acl_and_container_commands(cohort_base: str, env: dict[str, str], work: Path) -> None:
    out = sh("""
openstack secret store --name='tls_secret1' -t 'application/octet-stream' -e 'base64' --payload="$(base64 < server.p12)"
openstack acl user add -u 7f3a5c0e9b8d4e21a6c4d2f1e0b9a8c7 $(openstack secret list | awk '/ tls_secret1 / {print $2}')
openstack acl get $(openstack secret list | awk '/ tls_secret1 / {print $2}') -f json
openstack secret get $(openstack secret list | awk '/ tls_secret1 / {print $2}') -f json
openstack secret get --file fetched.p12 -t application/octet-stream \
  $(openstack secret list | awk '/ tls_secret1 / {print $2}')
cmp fetched.p12 server.p12 && echo "PAYLOAD ROUND TRIP"
""", cohort_base, env, work)
    assert "PAYLOAD ROUND TRIP" in out, out
    assert '"Users"' in out and "7f3a5c0e9b8d4e21a6c4d2f1e0b9a8c7" in out, out
    assert '"Status": "ACTIVE"' in out and "application/octet-stream" in out, out

    # The container variant of the cookbook: PEM secrets, then a certificate container.
    out = sh("""
openstack secret store --name='certificate1' -t 'text/plain' --payload="$(cat server.crt)"
openstack secret store --name='private_key1' -t 'text/plain' --payload="$(cat server.key)"
openstack secret container create --name='tls_container1' --type='certificate' \
  --secret="certificate=$(openstack secret list | awk '/ certificate1 / {print $2}')" \
  --secret="private_key=$(openstack secret list | awk '/ private_key1 / {print $2}')"
openstack acl user add -u 7f3a5c0e9b8d4e21a6c4d2f1e0b9a8c7 \
  $(openstack secret container list | awk '/ tls_container1 / {print $2}')
openstack secret container get $(openstack secret container list | awk '/ tls_container1 / {print $2}') -f shell
openstack secret get --payload $(openstack secret list | awk '/ certificate1 / {print $2}') -f value
""", cohort_base, env, work)
    assert 'type="certificate"' in out and "BEGIN CERTIFICATE" in out, out

    # Listing pages, ACL removal and deletion.
    listing = json.loads(sh("openstack secret list --limit 2 --offset 1 -f json", cohort_base, env, work))
    assert [row["Name"] for row in listing] == ["certificate1", "private_key1"], listing
    out = sh("""
REF=$(openstack secret list | awk '/ tls_secret1 / {print $2}')
openstack acl user remove -u 7f3a5c0e9b8d4e21a6c4d2f1e0b9a8c7 $REF
openstack acl submit --no-project-access $REF -f json
openstack acl delete $REF
openstack acl get $REF -f json
""", cohort_base, env, work)
    assert out.rstrip().endswith("]") and '"Project Access": false' in out and '"Project Access": true' in out, out
    assert not sh("openstack secret list --name nothing-like-this -f value", cohort_base, env, work).strip()


def test_listeners_take_the_stored_refs_and_keep_them_in_use(cohort_base: str, env: dict[str, str],
                                                             work: Path) -> None:
    refs = sh("""
openstack secret store --name='tls_secret2' -t 'application/octet-stream' -e 'base64' \
  --payload="$(base64 < server.p12)" -f value -c 'Secret href'
openstack secret store --name='certificate2' -t 'text/plain' --payload="$(cat server.crt)" -f value -c 'Secret href'
openstack secret store --name='private_key2' -t 'text/plain' --payload="$(cat server.key)" -f value -c 'Secret href'
""", cohort_base, env, work).split()
    secret_ref, cert_ref, key_ref = refs
    container_ref = sh(f"""
openstack secret container create --name='tls_container2' --type='certificate' \
  --secret="certificate={cert_ref}" --secret="private_key={key_ref}" -f value -c 'Container href'
""", cohort_base, env, work).strip()
    out = sh(f"""
openstack loadbalancer create --name lb1 --vip-subnet-id public-subnet --wait
openstack loadbalancer listener create --protocol-port 443 --protocol TERMINATED_HTTPS --name listener1 \
  --default-tls-container={secret_ref} --wait lb1
openstack loadbalancer listener create --protocol-port 8443 --protocol TERMINATED_HTTPS --name listener2 \
  --default-tls-container={container_ref} --wait lb1
openstack loadbalancer listener show listener2 -f value -c default_tls_container_ref
""", cohort_base, env, work, key_manager=False)
    assert container_ref in out, out
    for ref in (secret_ref, key_ref):
        done = subprocess.run(["openstack", "secret", "delete", ref], env={
            **env, "OS_AUTH_TYPE": "none", "OS_ENDPOINT": f"{cohort_base}/v1",
            "PATH": f"{env['VIRTUAL_ENV']}/bin:{env['PATH']}"}, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and "in use" in done.stderr, done
    sh("openstack loadbalancer delete --cascade --wait lb1", cohort_base, env, work, key_manager=False)
    sh(f"""
openstack secret container delete {container_ref}
openstack secret delete {secret_ref}
openstack secret delete {key_ref}
""", cohort_base, env, work)
