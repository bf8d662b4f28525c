# lcz: QGIS Processing plugin + training package for Local Climate Zone maps.
# `make test` and `make demo` work on a fresh Debian 12 machine: `setup` installs QGIS from
# Debian when it is missing (as root, or through sudo) and builds .venv. Xvfb (a virtual X
# display) lets tests/test_gui.py run the QGIS desktop for its real-display checks.
# `make test` then also runs the QGIS-facing tests on Debian 13's QGIS 3.40 LTR (test-qgis340).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := qgis python3-qgis qgis-providers python3-venv python3-pip xvfb
export QT_QPA_PLATFORM := offscreen
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup lint test test-qgis340 test-qgis344 demo package bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	@if ! command -v qgis_process.bin >/dev/null || ! command -v Xvfb >/dev/null \
	    || ! /usr/bin/python3 -c 'import qgis.core' 2>/dev/null; then \
	  echo "Installing QGIS and Xvfb from Debian ($(APT_PACKAGES))"; \
	  $(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y $(APT_PACKAGES); \
	fi
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -c "import qgis.core, osgeo.gdal, onnxruntime, torch, numpy; print('environment ok: numpy', numpy.__version__, 'onnxruntime', onnxruntime.__version__, 'torch', torch.__version__)"
	touch $@

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	$(PY) -m pytest
	$(MAKE) --no-print-directory test-qgis340

# The QGIS-facing tests on another Debian's QGIS, in a debootstrap root cached under build/
# (first run about 5 min, then about 3): a user's first hour (lcz:checkenvironment,
# lcz:installdependencies from PyPI), then the tests (tools/qgis_matrix.py has the list).
# Needs root and network; without them it says why and skips.
test-qgis340:
	python3 tools/qgis_matrix.py --suite trixie --root build/debian13

test-qgis344:
	python3 tools/qgis_matrix.py --suite sid --root build/debian-sid

demo: setup
	$(PY) tools/demo.py --out out

package: dist/lcz_qgis_plugin.zip

dist/lcz_qgis_plugin.zip: metadata.txt $(shell find lcz_qgis_plugin -type f -not -path '*/__pycache__/*')
	python3 tools/package_plugin.py --zip $@

bench: setup
	$(PY) bench/bench_classify.py
	$(PY) bench/bench_stack.py
	$(PY) bench/bench_training.py
	$(PY) bench/bench_tiles.py

clean:
	python3 tools/qgis_matrix.py --unmount build
	rm -rf dist build out .pytest_cache
