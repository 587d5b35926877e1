"""A throwaway PKI for TLS tests: one CA and a leaf for ``v2sync.test`` (and 127.0.0.1).

Generated once per session with ``cryptography`` (EC P-256: fast), written as PEM files so
configs can use ``certificateFile``/``keyFile`` or inline line arrays alike.
"""
from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SERVER_NAME = "v2sync.test"
VALID_DAYS = 30


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def pem_lines(self, path: Path) -> List[str]:
        return path.read_text().strip().splitlines()

    def server_tls(self, inline: bool = False, **extra) -> Dict:
        """``tlsSettings`` for an inbound serving the leaf certificate."""
        if inline:
            cert = {"certificate": self.pem_lines(self.cert_file),
                    "key": self.pem_lines(self.key_file)}
        else:
            cert = {"certificateFile": str(self.cert_file), "keyFile": str(self.key_file)}
        return {"certificates": [cert], **extra}

    def client_tls(self, server_name: str = SERVER_NAME, **extra) -> Dict:
        """``tlsSettings`` for an outbound trusting only this CA (as 4.34 reads it)."""
        return {"serverName": server_name, "disableSystemRoot": True,
                "certificates": [{"certificateFile": str(self.ca_file), "usage": "verify"}],
                **extra}


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _sign(subject: x509.Name, issuer: x509.Name, public_key, signing_key, ca: bool,
          sans: Sequence[x509.GeneralName] = ()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(directory: Path, names: Sequence[str] = (SERVER_NAME, "localhost"),
             dns_sans: bool = True, ip_sans: bool = True) -> Pki:
    """A CA and a leaf whose CN is ``names[0]``; its subjectAltNames are the names (unless
    not ``dns_sans``) and 127.0.0.1 (unless not ``ip_sans``)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _sign(_name("v2sync test CA"), _name("v2sync test CA"), ca_key.public_key(), ca_key,
               ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    sans = ([x509.DNSName(n) for n in names] if dns_sans else []) + \
        ([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))] if ip_sans else [])
    leaf = _sign(_name(names[0]), ca.subject, leaf_key.public_key(), ca_key, ca=False, sans=sans)
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    pki.ca_file.write_bytes(_pem(ca))
    pki.cert_file.write_bytes(_pem(leaf))
    pki.key_file.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return pki
