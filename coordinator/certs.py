"""`pipeedge-coord certs`: a private CA and one certificate per party of a deployment.

Files written to the output folder (keys are mode 0600):

    ca.crt / ca.key                   the deployment's CA (reused when it already exists, so adding
                                      a host does not invalidate the others)
    <host>.crt / <host>.key           one per host in hosts.yml: CN = host name, SAN = the host
                                      part of `address` (and of `peer_address`); used as the
                                      stage's server certificate and as its client certificate
                                      on the stage-to-stage hop
    coordinator.crt / coordinator.key CN = "coordinator": the only identity stages accept
                                      Assign / Release / PushWeights / Profile / MeasureLink from
    client.crt / client.key           CN = "client": SDK clients (Forward / Infer with the token)
    token                             a random bearer token for inference calls

Every certificate is ECDSA P-256, signed by the CA, valid for `days` days.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pipeedge.errors import PipeEdgeError
from pipeedge.security import DEFAULT_CLIENT_NAME, DEFAULT_COORDINATOR_NAME

DEFAULT_DAYS = 825


class CertsError(PipeEdgeError, ValueError):
    """Certificates cannot be made as asked; the message names the problem and the fix."""


@dataclass(frozen=True)
class Party:
    """One certificate to issue: who it names, where it is reachable, what it may do."""

    name: str                      # CN; file stem
    hosts: tuple[str, ...] = ()    # SAN entries: IPs or DNS names
    server: bool = True            # serverAuth EKU (stages; the coordinator when it serves)
    client: bool = True            # clientAuth EKU


def host_part(address: str) -> str:
    """'10.0.0.7:50051' -> '10.0.0.7'; '[::1]:50051' -> '::1'; 'jetson.lan:50051' -> 'jetson.lan'."""
    address = address.strip()
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    if address.count(":") > 1:  # bare IPv6 without a port
        return address
    return address.rsplit(":", 1)[0] if ":" in address else address


def file_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if not stem.strip("._"):
        raise CertsError(f"host name {name!r} cannot name a certificate file; rename the host "
                         "in hosts.yml")
    return stem


def parties_for(hosts, *, coordinator_name: str = DEFAULT_COORDINATOR_NAME,
                client_name: str = DEFAULT_CLIENT_NAME,
                coordinator_hosts: tuple[str, ...] = ()) -> list[Party]:
    """One party per host (objects with name/address/peer_address), plus coordinator and client.

    A host may not take a reserved name, or a SAN equal to one: stages check the coordinator's
    identity by CN or SAN, so such a host could act as the coordinator.
    """
    reserved = {coordinator_name, client_name}
    out: list[Party] = []
    stems: dict[str, str] = {}
    for h in hosts:
        parts = [host_part(a) for a in (h.address, getattr(h, "peer_address", "")) if a]
        names = tuple(dict.fromkeys(n for n in parts if n))
        clash = reserved & ({h.name} | set(names))
        if clash:
            raise CertsError(f"host {h.name} uses the reserved name {min(clash)!r} (the "
                             "identity of the coordinator or of clients); rename it in hosts.yml")
        stem = file_stem(h.name)
        if stem in stems:
            raise CertsError(f"hosts {stems[stem]} and {h.name} would share the file "
                             f"{stem}.crt; rename one of them")
        stems[stem] = h.name
        out.append(Party(h.name, names))
    out.append(Party(coordinator_name, tuple(coordinator_hosts)))
    out.append(Party(client_name, (), server=False))
    return out


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _san(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def load_or_create_ca(out_dir: Path, *, days: int = DEFAULT_DAYS, name: str = "PipeEdge CA"):
    """(certificate, key) of the CA in `out_dir`, created when absent."""
    crt, key_path = out_dir / "ca.crt", out_dir / "ca.key"
    if crt.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(crt.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except ValueError as exc:
            raise CertsError(f"{crt} or {key_path} is not a PEM certificate/key ({exc}); "
                             "delete both to create a new CA") from None
        return cert, key, False
    if crt.exists() != key_path.exists():
        raise CertsError(f"{out_dir} has only one of ca.crt and ca.key; restore the other or "
                         "delete it to create a new CA (and reissue every certificate)")
    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _write_key(key_path, key)
    _write_cert(crt, cert)
    return cert, key, True


def issue(party: Party, ca_cert, ca_key, out_dir: Path, *, days: int = DEFAULT_DAYS) -> Path:
    """Write <name>.crt and <name>.key signed by the CA; returns the certificate's path."""
    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if party.server else []) + \
             ([ExtendedKeyUsageOID.CLIENT_AUTH] if party.client else [])
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, party.name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                            content_commitment=False, data_encipherment=False,
                                            key_agreement=True, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    if party.hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(_san(party.hosts)),
                                        critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    stem = file_stem(party.name)
    _write_key(out_dir / f"{stem}.key", key)
    path = out_dir / f"{stem}.crt"
    _write_cert(path, cert)
    return path


def write_token(path: Path, *, overwrite: bool = False) -> bool:
    """A random bearer token (256 bits, URL-safe) in a 0600 file; False if one was kept."""
    if path.exists() and not overwrite:
        return False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return True


@dataclass(frozen=True)
class CertsResult:
    out_dir: Path
    ca_created: bool
    issued: tuple[tuple[Party, Path], ...]
    token_path: Path | None


def make_certs(hosts, out_dir: Path, *, days: int = DEFAULT_DAYS,
               coordinator_name: str = DEFAULT_COORDINATOR_NAME,
               client_name: str = DEFAULT_CLIENT_NAME, coordinator_hosts: tuple[str, ...] = (),
               token: bool = True) -> CertsResult:
    """CA (created or reused), one certificate per host, the coordinator's and a client's."""
    if days <= 0:
        raise CertsError(f"--days must be positive, got {days}")
    parties = parties_for(hosts, coordinator_name=coordinator_name, client_name=client_name,
                          coordinator_hosts=coordinator_hosts)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key, created = load_or_create_ca(out_dir, days=days)
    issued = tuple((p, issue(p, ca_cert, ca_key, out_dir, days=days)) for p in parties)
    token_path = out_dir / "token" if token else None
    if token_path:
        write_token(token_path)
    return CertsResult(out_dir, created, issued, token_path)


def summary(result: CertsResult) -> str:
    """What was written, and how each side uses it."""
    d = result.out_dir.resolve()
    lines = [f"{'created' if result.ca_created else 'reused'} CA {d / 'ca.crt'}"]
    for party, path in result.issued:
        sans = ", ".join(party.hosts) or "-"
        lines.append(f"  {party.name:16s} {path}  (SAN: {sans})")
    if result.token_path:
        lines.append(f"  token            {result.token_path}")
    lines.append("")
    lines.append(f"hosts.yml:   tls: {d}" + (f"\n             token: file:{result.token_path}"
                                              if result.token_path else ""))
    stage_flags = (f"--tls-ca {d / 'ca.crt'} --tls-cert {d}/<host>.crt --tls-key {d}/<host>.key"
                   + (f" --token-file {result.token_path}" if result.token_path else ""))
    lines.append(f"each stage:  pipeedge-stage ... {stage_flags}")
    lines.append("copy to each host only its own <host>.crt/.key, ca.crt and token; ca.key "
                 "stays here")
    return "\n".join(lines)
