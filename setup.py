"""What pyproject.toml cannot say: the wheel ships the study configs of ``experiments/`` inside the
package, as ``jaxcl.experiments`` (``jaxcl.config`` reads them there in an installed copy, and
beside the package in a checkout), so a plain ``pip install`` lists every config. Everything else
is in pyproject.toml; build a wheel with ``scripts/build_wheel.sh``."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["jaxcl", "jaxcl.*"]), "jaxcl.experiments"],
    package_dir={"jaxcl.experiments": "experiments"},
)
