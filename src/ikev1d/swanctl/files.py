"""The file side of ``ikev1d import-swanctl``: read swanctl.conf and its includes,
and list the private keys beside it.  Everything else is pure (settings, convert)."""

from __future__ import annotations

import glob
from collections.abc import Callable
from pathlib import Path, PurePath

from cryptography.exceptions import UnsupportedAlgorithm

from ikev1d.swanctl.convert import Conversion, convert_swanctl
from ikev1d.swanctl.settings import SettingsError, parse_settings

__all__ = ["import_swanctl_file", "key_matcher", "read_include"]

# Where swanctl --load-creds looks for private keys, relative to swanctl.conf.
_KEY_FOLDERS = ("private", "rsa", "ecdsa", "pkcs8")


def _read(path: Path, shown: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SettingsError(shown, 1, "not UTF-8 text") from None


def read_include(pattern: str, base: PurePath) -> list[tuple[str, str]]:
    """Files an ``include`` names, sorted as the shell expands the pattern.

    A pattern that matches nothing is no error (strongSwan skips it too); a
    plain file name that does not exist is (OSError)."""
    full = Path(pattern).expanduser()
    if not full.is_absolute():
        full = Path(base) / full
    if glob.has_magic(str(full)):
        names = sorted(glob.glob(str(full)))
    else:
        if not full.is_file():
            raise FileNotFoundError(2, f"no such file: {full}")
        names = [str(full)]
    return [(name, _read(Path(name), name)) for name in names if Path(name).is_file()]


def _public_key_der(data: bytes, *, private: bool) -> bytes | None:
    """SubjectPublicKeyInfo of a certificate or an unencrypted private key, PEM or DER."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        if private:
            loader = (serialization.load_pem_private_key if b"-----BEGIN" in data
                      else serialization.load_der_private_key)
            public = loader(data, password=None).public_key()
        else:
            cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                    else x509.load_der_x509_certificate(data))
            public = cert.public_key()
        return public.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


def key_matcher(keys: list[str]) -> Callable[[str], str | None]:
    """``match(cert_file)``: the key file among ``keys`` whose public key is the
    certificate's, as swanctl pairs them; None when none is (or it is encrypted)."""

    def match(cert_file: str) -> str | None:
        try:
            wanted = _public_key_der(Path(cert_file).read_bytes(), private=False)
        except OSError:
            return None
        if wanted is None:
            return None
        for key in keys:
            try:
                found = _public_key_der(Path(key).read_bytes(), private=True)
            except OSError:
                continue
            if found == wanted:
                return key
        return None

    return match


def import_swanctl_file(path: str | Path) -> Conversion:
    """Parse and convert a swanctl.conf file (raises SettingsError, OSError)."""
    file = Path(path)
    text = _read(file, str(path))
    root = parse_settings(text, str(path), read_include)
    base = file.resolve().parent
    keys = sorted(str(p) for folder in _KEY_FOLDERS if (base / folder).is_dir()
                  for p in (base / folder).iterdir() if p.is_file())
    return convert_swanctl(root, base_dir=base, private_keys=keys,
                           key_for_certificate=key_matcher(keys), source=str(path))
