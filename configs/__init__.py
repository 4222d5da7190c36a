"""The configs sqrl ships: named stage configs (tiny/, paper/), rubrics/, judges/ prompt sets and examples/.

This folder is what users read and edit; it is also a package so that an installed sqrl carries it as
package data (``pyproject.toml``), found through ``importlib.resources`` by ``sqrl.config.shipped``. A path
such as ``configs/tiny/calibration.yaml`` means the file in the working folder when one is there, else the
shipped copy (``sqrl.config.find_config``).
"""
