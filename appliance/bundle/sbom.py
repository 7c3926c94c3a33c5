"""A CycloneDX 1.5 SBOM (JSON) of a bundle's wheels, models and knowledge bases.

Deterministic: components are sorted, the serial number is derived from the components'
hashes, and the timestamp is ``SOURCE_DATE_EPOCH`` (omitted when that is unset).
"""

from __future__ import annotations

import email.parser
import json
import re
import uuid
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["WheelInfo", "build_sbom", "wheel_info"]


@dataclass(frozen=True)
class WheelInfo:
    """What the SBOM says about one wheel."""

    file: str
    name: str
    version: str
    sha256: str
    licence: str
    summary: str
    spdx: bool = False
    """Whether ``licence`` is an SPDX expression (the wheel's License-Expression)."""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_info(path: Path, sha256: str) -> WheelInfo:
    """Name, version, licence and summary from a wheel's METADATA."""
    name, version = path.name.split("-")[:2]
    licence = summary = ""
    spdx = False
    with zipfile.ZipFile(path) as zf:
        meta = [m for m in zf.namelist()
                if m.count("/") == 1 and m.endswith(".dist-info/METADATA")]
        if meta:
            msg = email.parser.Parser().parsestr(
                zf.read(meta[0]).decode("utf-8", "replace"), headersonly=True
            )
            name = str(msg.get("Name", name))
            version = str(msg.get("Version", version))
            summary = str(msg.get("Summary", "") or "")
            licence = str(msg.get("License-Expression", "") or "")
            spdx = bool(licence)
            if not licence:
                raw = str(msg.get("License", "") or "").strip()
                if raw and "\n" not in raw and len(raw) <= 80:
                    licence = raw
            if not licence:
                classifiers = [str(c) for c in msg.get_all("Classifier", [])
                               if str(c).startswith("License ::")]
                if classifiers:
                    licence = classifiers[0].split("::")[-1].strip()
    return WheelInfo(path.name, name, version, sha256, licence, summary, spdx)


def _licence(text: str, spdx: bool = False) -> list[dict[str, Any]]:
    if not text:
        return []
    if spdx:
        return [{"expression": text}]
    return [{"license": {"name": text}}]


def build_sbom(
    *,
    appliance_version: str,
    wheels: list[WheelInfo],
    models: list[dict[str, Any]],
    knowledge_bases: list[dict[str, Any]],
    python_version: str,
    platform: str,
    epoch: int | None,
) -> bytes:
    """The SBOM document as canonical JSON bytes.

    ``models`` items: id, file, sha256, size, role, format, licence, source, description.
    ``knowledge_bases`` items: name, file, sha256, size, embedder.
    """
    components: list[dict[str, Any]] = []
    for w in sorted(wheels, key=lambda w: _canonical(w.name)):
        comp: dict[str, Any] = {
            "type": "library",
            "bom-ref": f"pkg:pypi/{_canonical(w.name)}@{w.version}",
            "name": w.name,
            "version": w.version,
            "purl": f"pkg:pypi/{_canonical(w.name)}@{w.version}",
            "hashes": [{"alg": "SHA-256", "content": w.sha256}],
            "properties": [{"name": "appliance:file", "value": f"wheels/{w.file}"}],
        }
        if w.summary:
            comp["description"] = w.summary
        if lic := _licence(w.licence, w.spdx):
            comp["licenses"] = lic
        components.append(comp)
    for m in sorted(models, key=lambda m: str(m["id"])):
        comp = {
            "type": "machine-learning-model",
            "bom-ref": f"model:{m['id']}",
            "name": m["id"],
            "hashes": [{"alg": "SHA-256", "content": m["sha256"]}],
            "properties": [
                {"name": "appliance:file", "value": m["file"]},
                {"name": "appliance:role", "value": m["role"]},
                {"name": "appliance:format", "value": m["format"]},
                {"name": "appliance:size", "value": str(m["size"])},
            ],
        }
        if m.get("source"):
            comp["properties"].append({"name": "appliance:source", "value": m["source"]})
        if m.get("description"):
            comp["description"] = m["description"]
        if lic := _licence(str(m.get("licence", ""))):
            comp["licenses"] = lic
        components.append(comp)
    for kb in sorted(knowledge_bases, key=lambda k: str(k["name"])):
        components.append({
            "type": "data",
            "bom-ref": f"kb:{kb['name']}",
            "name": kb["name"],
            "description": "appliance knowledge base (SQLite: documents, chunks, FTS5, vectors)",
            "hashes": [{"alg": "SHA-256", "content": kb["sha256"]}],
            "properties": [
                {"name": "appliance:file", "value": kb["file"]},
                {"name": "appliance:embedder", "value": str(kb.get("embedder") or "")},
                {"name": "appliance:documents", "value": str(kb.get("documents", ""))},
            ],
        })
    identity = "\n".join(
        f"{c['bom-ref']} {c['hashes'][0]['content']}" for c in components
    ) + f"\n{appliance_version} {python_version} {platform}"
    metadata: dict[str, Any] = {
        "component": {
            "type": "application",
            "bom-ref": f"pkg:pypi/appliance@{appliance_version}",
            "name": "appliance-bundle",
            "version": appliance_version,
            "description": f"Offline appliance bundle for CPython {python_version} on "
                           f"{platform}",
        },
        "tools": {"components": [{"type": "application", "name": "appliance bundle build",
                                  "version": appliance_version}]},
    }
    if epoch is not None:
        metadata["timestamp"] = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'appliance:' + identity)}",
        "version": 1,
        "metadata": metadata,
        "components": components,
    }
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
