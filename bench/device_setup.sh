# Source on the lent GPU machine (no network): installs the carried wheels (.whl/) into /tmp/site and
# puts the repo's lib/ on the path. The wheels: zstandard, lz4, constriction (cp312) and nvCOMP
# (nvidia-nvcomp-cu13 + nvidia-libnvcomp-cu13), fetched here with `pip download --platform`.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/zstandard-*.whl .whl/lz4-*.whl .whl/constriction-*.whl .whl/nvidia_libnvcomp_cu13-*.whl 2>&1 | tail -2
# the nvcomp wheel is trimmed to its cp312 extension (the 64 MiB carry limit): unzip it, do not let pip check RECORD
python3 -m zipfile -e .whl/nvidia_nvcomp_cu13-*.whl /tmp/site
export PYTHONPATH=/tmp/site:$PWD/lib
export KVWIRE_DEVICE_RUN=1
