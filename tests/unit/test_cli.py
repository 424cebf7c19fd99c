from ikev1d.cli import main


def test_demo_command_exits_zero() -> None:
    assert main(["demo"]) == 0
