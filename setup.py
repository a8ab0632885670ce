"""Package discovery only (everything else is in pyproject.toml): the top-level `services/` and `loadgen/`
folders install as the packages `opscale_services` and `opscale_loadgen`, which pyproject's
`packages.find` cannot express (it cannot rename a folder)."""

from setuptools import find_packages, setup


def renamed(folder: str, package: str) -> list[str]:
    return [package] + [f"{package}.{sub}" for sub in find_packages(folder)]


setup(packages=find_packages("libs") + renamed("services", "opscale_services") + renamed("loadgen", "opscale_loadgen"))
