"""The `kreg` command."""

import argparse
import os
import pathlib
import sys


def _demo(args):
    from kreg import demo

    demo.run(quick=args.quick, out=args.out)
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kreg", description="Regularization and normalization tools for Keras 3."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="show kreg on data that ships with the install")
    demo.add_argument("--quick", action="store_true", help="a few seconds, for tests")
    demo.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path("kreg-demo"),
        help="folder for the report (default: kreg-demo/)",
    )
    demo.set_defaults(handler=_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
