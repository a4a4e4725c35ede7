"""Evidence bundles on disk: the zip format, its signed manifest, and offline verification.

Format ``sallyport-evidence/1``, a zip holding::

    manifest.json          format, scope, key id, audit slice bounds, SHA-256 and size of
                           every other file (all but manifest.json and manifest.sig)
    manifest.sig           base64 Ed25519 signature over the bytes of manifest.json
    public-key.pem         the audit public key (the auditor may bring their own copy)
    sessions.json          sessions: vendor user, device snapshot, times, end, recordings
    access.json            the grants, with their access requests and approvals
    audit/events.jsonl     a contiguous slice of the audit chain; events outside the scope
                           are redacted to their content hash (recorder.chain)
    audit/checkpoints.json the signed checkpoints that anchor both ends of the slice
    recordings/...         the recordings as stored
    report.html            the same, readable by a person

``verify_bundle`` needs nothing but the file (and, better, the public key from a source
the auditor trusts): no database, no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from recorder import chain
from recorder.verify import ChainBroken, check_checkpoint

FORMAT = "sallyport-evidence/1"
MANIFEST, SIGNATURE, PUBLIC_KEY = "manifest.json", "manifest.sig", "public-key.pem"
EVENTS, CHECKPOINTS = "audit/events.jsonl", "audit/checkpoints.json"
SESSIONS, ACCESS, REPORT = "sessions.json", "access.json", "report.html"


def write_bundle(
    path: Path,
    files: dict[str, bytes],
    *,
    key: Ed25519PrivateKey,
    scope: dict[str, str],
    audit: dict[str, Any],
    created_at: str,
) -> None:
    """Write the zip atomically: the manifest lists ``files`` plus the public key."""
    public = key.public_key()
    contents = {PUBLIC_KEY: chain.public_key_pem(public), **files}
    manifest = {
        "format": FORMAT,
        "created_at": created_at,
        "scope": scope,
        "key_id": chain.key_id(public),
        "audit": audit,
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in sorted(contents.items())
        },
    }
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    signature = chain.sign(key, manifest_bytes).encode() + b"\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, manifest_bytes)
            zf.writestr(SIGNATURE, signature)
            for name, data in sorted(contents.items()):
                zf.writestr(name, data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class BundleResult:
    ok: bool
    first_bad: str | None
    files: int = 0
    events: int = 0
    checkpoints: int = 0
    key_id: str = ""


class BundleBroken(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def verify_bundle(path: Path, public_key: Ed25519PublicKey | None = None) -> BundleResult:
    """Check a bundle offline. With ``public_key`` (the auditor's trusted copy) the
    bundle must be signed by exactly that key."""
    check = _Check()
    try:
        check.run(path, public_key)
    except BundleBroken as exc:
        return BundleResult(False, exc.message, check.files, check.events, check.signed, check.kid)
    except ChainBroken as exc:
        return BundleResult(False, exc.message, check.files, check.events, check.signed, check.kid)
    return BundleResult(True, None, check.files, check.events, check.signed, check.kid)


class _Check:
    def __init__(self) -> None:
        self.files = self.events = self.signed = 0
        self.kid = ""
        self.zf: zipfile.ZipFile | None = None

    def read(self, name: str) -> bytes:
        assert self.zf is not None
        try:
            return self.zf.read(name)
        except KeyError:
            raise BundleBroken(f"{name}: missing from the bundle") from None
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
            raise BundleBroken(f"{name}: damaged in the zip ({exc})") from None

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name))
        except (UnicodeDecodeError, ValueError):
            raise BundleBroken(f"{name}: not valid JSON") from None

    def run(self, path: Path, trusted: Ed25519PublicKey | None) -> None:
        try:
            self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise BundleBroken(f"bundle: not a readable zip file ({exc})") from None
        with self.zf:
            names = [info.filename for info in self.zf.infolist()]
            for name in names:
                if names.count(name) > 1:
                    raise BundleBroken(f"{name}: appears more than once in the zip")
            manifest, key = self.signed_manifest(trusted)
            self.check_files(manifest, names)
            try:
                self.check_audit(manifest, key)
                self.check_recordings()
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise BundleBroken(f"bundle: malformed content ({exc!r})") from None

    def signed_manifest(
        self, trusted: Ed25519PublicKey | None
    ) -> tuple[dict[str, Any], Ed25519PublicKey]:
        raw = self.read(MANIFEST)
        try:
            manifest = json.loads(raw)
            files = manifest["files"]
            assert isinstance(files, dict)
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AssertionError):
            raise BundleBroken(f"{MANIFEST}: not a valid manifest") from None
        if manifest.get("format") != FORMAT:
            raise BundleBroken(f"{MANIFEST}: unsupported format {manifest.get('format')!r}")
        pem = self.read(PUBLIC_KEY)
        try:
            key = chain.load_public_key(pem)
        except ValueError:
            raise BundleBroken(f"{PUBLIC_KEY}: not an Ed25519 public key") from None
        self.kid = chain.key_id(key)
        if trusted is not None and chain.raw_public_key(trusted) != chain.raw_public_key(key):
            raise BundleBroken(
                f"{PUBLIC_KEY}: the bundle is signed by key {self.kid[:16]}..., not the "
                f"given public key {chain.key_id(trusted)[:16]}..."
            )
        try:
            signature = self.read(SIGNATURE).decode("ascii").strip()
        except UnicodeDecodeError:
            signature = ""
        if not chain.signature_ok(key, signature, raw):
            # A bad signature cannot say which file changed; name what it can tell apart.
            listed = files.get(PUBLIC_KEY)
            if not isinstance(listed, dict) or listed.get("sha256") != _sha(pem):
                raise BundleBroken(
                    f"{PUBLIC_KEY}: SHA-256 differs from {MANIFEST} "
                    f"({PUBLIC_KEY} or {MANIFEST} was changed)"
                )
            raise BundleBroken(
                f"{SIGNATURE}: the signature over {MANIFEST} does not verify "
                f"({MANIFEST} or {SIGNATURE} was changed)"
            )
        if manifest.get("key_id") != self.kid:
            raise BundleBroken(f"{MANIFEST}: key_id does not name {PUBLIC_KEY}")
        return manifest, key

    def check_files(self, manifest: dict[str, Any], names: list[str]) -> None:
        files: dict[str, Any] = manifest["files"]
        for name in sorted(files):
            data = self.read(name)
            entry = files[name]
            if len(data) != entry.get("size") or _sha(data) != entry.get("sha256"):
                raise BundleBroken(f"{name}: SHA-256 differs from the manifest (changed)")
            self.files += 1
        for name in names:
            if name not in files and name not in (MANIFEST, SIGNATURE):
                raise BundleBroken(f"{name}: not listed in the manifest (added)")

    def check_audit(self, manifest: dict[str, Any], key: Ed25519PublicKey) -> None:
        bounds = manifest["audit"]
        lines = [line for line in self.read(EVENTS).splitlines() if line.strip()]
        checkpoints: list[dict[str, Any]] = self.json(CHECKPOINTS)
        if not lines:
            return
        chain_hash: dict[int, str] = {}
        prev = bounds["first_prev_hash"]
        expected = int(bounds["first_event"])
        for line in lines:
            event = json.loads(line)
            number = int(event["id"])
            if number != expected:
                raise ChainBroken(f"audit event {expected}: missing from the slice")
            if event["prev_hash"] != prev:
                raise ChainBroken(f"audit event {number}: prev_hash does not link")
            if event.get("redacted"):
                digest = str(event["content_hash"])
            else:
                content = {k: event[k] for k in chain.CONTENT_KEYS}
                digest = chain.content_hash(content)
            if chain.link_hash(prev, digest) != event["hash"]:
                raise ChainBroken(f"audit event {number}: content does not match its hash")
            prev = chain_hash[number] = event["hash"]
            expected += 1
            self.events += 1
        last = expected - 1
        if last != int(bounds["last_event"]):
            raise ChainBroken(f"audit event {last + 1}: missing from the slice")
        first = int(bounds["first_event"])
        anchors = {"start": first == 1 and bounds["first_prev_hash"] == chain.GENESIS}
        anchors["end"] = False
        for cp in checkpoints:
            event_id = int(cp["event_id"])
            check_checkpoint(
                int(cp["id"]), event_id, cp["hash"], cp["at"], cp["key_id"], cp["signature"], key
            )
            self.signed += 1
            if event_id == first - 1 and cp["hash"] == bounds["first_prev_hash"]:
                anchors["start"] = True
            if event_id in chain_hash:
                if chain_hash[event_id] != cp["hash"]:
                    raise ChainBroken(
                        f"audit checkpoint {cp['id']}: its hash differs from the chain at "
                        f"event {event_id}"
                    )
                anchors["end"] = anchors["end"] or event_id == last
        if not anchors["start"]:
            raise ChainBroken(f"audit event {first}: the slice start is not anchored")
        if not anchors["end"]:
            raise ChainBroken(f"audit event {last}: no signed checkpoint covers the slice end")

    def check_recordings(self) -> None:
        """A bundled recording must have the SHA-256 the gateway put in the audit chain."""
        final: dict[str, tuple[int, str]] = {}
        for line in self.read(EVENTS).splitlines():
            event = json.loads(line) if line.strip() else {}
            if event.get("tag") == "broker:recording:final":
                final[event["detail"].get("key")] = (event["id"], event["detail"].get("sha256"))
        for session in self.json(SESSIONS)["sessions"]:
            for rec in session["recordings"]:
                name = rec.get("file")
                if not name:
                    continue
                digest = _sha(self.read(name))
                if rec.get("sha256") and digest != rec["sha256"]:
                    raise BundleBroken(
                        f"{name}: SHA-256 differs from the one recorded at session end"
                    )
                event = final.get(rec["storage_key"])
                if event is not None and event[1] != digest:
                    raise BundleBroken(f"{name}: SHA-256 differs from audit event {event[0]}")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
