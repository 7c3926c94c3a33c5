"""Bundle commands: bundle build / keygen / verify, and doctor."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from appliance.cli._base import AppContext, cli, err, lit, out, pass_ctx
from appliance.files import format_bytes

_PY = f"{sys.version_info[0]}.{sys.version_info[1]}"


@cli.group()
def bundle() -> None:
    """Build, sign and verify offline bundles (for USB sticks).

    A bundle holds every wheel, the models and chosen knowledge bases, an installer
    (install.sh) and a signed manifest; the target needs only Python 3.11/3.12 with venv.
    """


@bundle.command("build", short_help="Build a signed offline bundle folder.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the bundle to (new or empty, or an earlier bundle).")
@click.option("--kb", "kbs", multiple=True, metavar="NAME",
              help="Knowledge base to include (repeat for several).")
@click.option("--models", "models", multiple=True, metavar="ID",
              help="Model to include (repeat, or separate with commas) [default: every packaged "
                   "model]; tokenizers and the embedders of the knowledge bases come along.")
@click.option("--with-train", is_flag=True, help="Also bundle the training wheels (torch ...).")
@click.option("--python-version", type=click.Choice(["3.11", "3.12"]), default=_PY,
              show_default=True, help="Python version of the target machine.")
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Private signing key [default: DATA_DIR/keys/bundle-signing.key].")
@click.option("--json", "as_json", is_flag=True, help="Print the build report as JSON.")
@pass_ctx
def bundle_build(c: AppContext, out_dir: Path, kbs: tuple[str, ...], models: tuple[str, ...],
                 with_train: bool, python_version: str, key: Path | None,
                 as_json: bool) -> None:
    """Build a signed offline bundle (uses the package index only to fill its wheel cache)."""
    from appliance.bundle.build import BuildOptions, build_bundle

    ids = [m.strip() for item in models for m in item.split(",") if m.strip()]
    options = BuildOptions(out=out_dir, kbs=kbs, models=ids, with_train=with_train,
                           python_version=python_version, key=key)
    report = build_bundle(c.app, options, log=lambda msg: err.print(f"[dim]{lit(msg)}[/]"))
    if as_json:
        click.echo(json.dumps(report.to_json()))
        return
    out.print(f"[bold green]Bundle written[/] to {lit(report.out)}: {report.files} files, "
              f"{format_bytes(report.bytes)}, {report.wheels} wheels, models "
              f"{', '.join(report.models)}; knowledge bases {', '.join(report.kbs) or 'none'} "
              f"({report.seconds:.0f} s)")
    out.print(f"signed by {report.signer}", markup=False)
    out.print("Give the installer your public key (.pub) or this fingerprint through another "
              "channel than the stick; on the target run: "
              f"sh {report.out}/install.sh --trusted-key bundle-signing.pub")


@bundle.command("keygen", short_help="Create the ed25519 key pair that signs bundles.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the key pair [default: DATA_DIR/keys].")
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
def bundle_keygen(out_dir: Path | None, force: bool) -> None:
    """Create the ed25519 key pair that signs bundles (bundle-signing.key and .pub)."""
    from appliance.bundle.keys import generate

    pair = generate(out_dir, force=force)
    out.print(f"private key {pair.private} (keep it here; readable by you only)", markup=False)
    out.print(f"public key  {pair.public} (give it to whoever installs your bundles)",
              markup=False)
    out.print(f"fingerprint {pair.fingerprint}")


@bundle.command("verify",
                short_help="Check a bundle's files against its MANIFEST and signature.")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--trusted-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The builder's public key (.pub): proves where the bundle comes from.")
@click.option("--trusted-fingerprint", default=None, metavar="FP",
              help="The builder's key fingerprint, instead of --trusted-key.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bundle_verify(directory: Path, trusted_key: Path | None, trusted_fingerprint: str | None,
                  as_json: bool) -> None:
    """Check every file of a bundle against its MANIFEST, and the signature."""
    from appliance.bundle.errors import BundleError
    from appliance.bundle.verify import VerifyError, verify_bundle

    try:
        report = verify_bundle(directory, trusted_key=trusted_key,
                               trusted_fingerprint=trusted_fingerprint)
    except VerifyError as exc:
        raise BundleError(str(exc)) from exc
    except OSError as exc:  # a file vanished or became unreadable during the check
        raise BundleError(f"Cannot read {exc.filename or directory}: {exc.strerror or exc}; "
                          "copy the bundle again from its source.") from exc
    if as_json:
        click.echo(json.dumps({"ok": True, "files": report.files, "bytes": report.bytes,
                               "signer": report.signer, "trusted": report.trusted}))
        return
    out.print(f"[green]ok[/] {report.files} files, {format_bytes(report.bytes)}: every sha256 "
              "matches the MANIFEST, and the signature is valid")
    if report.trusted:
        out.print(f"[green]origin[/] signed by the trusted key {lit(report.signer)}")
    else:
        out.print(f"[yellow]origin not checked[/]: signed by {lit(report.signer)}, the key "
                  "shipped in the bundle; only integrity was checked (pass --trusted-key FILE "
                  "to check where it comes from)")


@cli.command(short_help="Check this installation: CPU, models, knowledge bases.")
@click.option("--model", default=None, metavar="ID",
              help="Generator to load and ask [default: the default answer model].")
@click.option("--kb", "kbs", multiple=True, metavar="NAME",
              help="Knowledge base to check (repeat) [default: all].")
@click.option("--question", default=None, help="Smoke question [default: one about the first "
                                                "document of the first knowledge base].")
@click.option("--no-smoke", is_flag=True, help="Skip the smoke question.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(model: str | None, kbs: tuple[str, ...], question: str | None, no_smoke: bool,
           as_json: bool) -> None:
    """Check this installation: CPU, models, embedder, generator, knowledge bases, an answer."""
    from appliance.api import Appliance
    from appliance.bundle.doctor import Check, run_doctor
    from appliance.bundle.errors import DoctorError
    from appliance.config import load_settings

    # One generation thread: the smoke answer is about working, not speed, and a busy CPU
    # slows llama.cpp's thread barriers far more than it slows one thread.
    app = Appliance(load_settings(generate={"max_tokens": 16, "threads": 1}))

    def show(check: Check) -> None:
        if not as_json:
            mark = "[green]ok  [/]" if check.ok else "[red]FAIL[/]"
            out.print(f"{mark} {check.name:<16} {lit(check.detail)} "
                      f"[dim]({check.seconds:.1f} s)[/]")

    try:
        checks = run_doctor(app, model=model, kbs=list(kbs) or None, question=question,
                            smoke=not no_smoke, report=show)
    finally:
        app.close()
    if as_json:
        click.echo(json.dumps([c.to_json() for c in checks]))
    failed = [c.name for c in checks if not c.ok]
    if failed:
        raise DoctorError(f"{len(failed)} check(s) failed ({', '.join(failed)}); fix what they "
                          "say, or reinstall the bundle.")
    if not as_json:
        out.print(f"[bold green]All {len(checks)} checks passed.[/]")
