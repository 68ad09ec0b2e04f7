"""The gateway on its own, from Python; the same as ``leapasgi serve --config gateway.toml``.

python examples/standalone.py [--port 8000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from leapasgi import Gateway


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    gateway = Gateway.from_config(Path(__file__).with_name("gateway.toml"))
    uvicorn.run(gateway.app, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
