"""`hmtx gen`: Verilog + RTLIL for tiny, ports parsed back by pyverilog match signature and docs;
and the port check does fail on drift."""

from hmtx.host.cli import main
from hmtx.host.cmd_gen import check_ports, protocol_ports, PROTOCOL_DOC


def test_gen_tiny_writes_checked_verilog(tmp_path):
    assert main(["gen", "--config", "tiny", "--out", str(tmp_path)]) == 0
    folder = tmp_path / "tiny"
    v = (folder / "hmtx_top.v").read_text()
    assert "module hmtx_top(" in v
    assert (folder / "hmtx_top.il").stat().st_size > 1000
    table = (folder / "hmtx_top.ports.md").read_text()
    for port in ("cmd__payload", "cmd__valid", "cmd__ready", "rsp__payload", "rsp__valid", "rsp__ready"):
        assert f"`{port}`" in table
    # only the outputs: pyverilog's parser table (parsetab.py) is not left in the user's folder
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == \
        ["hmtx_top.il", "hmtx_top.noattr.v", "hmtx_top.ports.md", "hmtx_top.v"]


def test_gen_contract_2_writes_its_own_folder(tmp_path):
    assert main(["gen", "--config", "tiny", "--contract", "2", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "tiny-c2" / "hmtx_top.ports.md").read_text()
    assert "contract 2" in table and "`cmd__payload`" in table
    assert not (tmp_path / "tiny").exists()


def test_port_check_reports_drift():
    expected = {"clk": ("input", 1), "rst": ("input", 1), "cmd__payload": ("input", 8),
                "cmd__valid": ("input", 1), "cmd__ready": ("output", 1), "rsp__payload": ("output", 8),
                "rsp__valid": ("output", 1), "rsp__ready": ("input", 1)}
    documented = protocol_ports(PROTOCOL_DOC)
    assert check_ports(expected, dict(expected), documented) == []
    wrong = dict(expected, cmd__payload=("input", 9))
    assert any("cmd__payload" in p for p in check_ports(expected, wrong, documented))
    missing = {k: v for k, v in expected.items() if k != "rsp__ready"}
    assert any("rsp__ready" in p for p in check_ports(expected, missing, documented))
    assert any("extra" in p for p in check_ports(expected, dict(expected, extra=("input", 1)), documented))
