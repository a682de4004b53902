"""The product CLI's help: the dev-* oracle instruments are hidden from it but still run."""
from conftest import run_nnpipe


def test_help_lists_no_dev_commands():
    out = run_nnpipe("--help").stdout
    assert "finetune" in out and "export-gguf" in out  # the product commands are listed
    assert "dev-" not in out


def test_dev_commands_still_parse():
    r = run_nnpipe("dev-forward", "--help")
    assert "dev-forward" in r.stdout
