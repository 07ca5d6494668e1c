"""``import sageattention`` and ``import sageattention.integrations`` import neither diffusers nor
transformers; the integrations' names resolve lazily to their submodules."""

import subprocess
import sys

import pytest


def test_import_does_not_pull_in_diffusers_or_transformers():
    code = (
        "import sys, sageattention, sageattention.integrations; "
        "assert 'diffusers' not in sys.modules and 'transformers' not in sys.modules, "
        "[m for m in ('diffusers', 'transformers') if m in sys.modules]; "
        "print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_names_resolve_to_their_submodules():
    import sageattention.integrations as integrations
    from sageattention.integrations.diffusers import SageAttnProcessor, apply_sageattn
    from sageattention.integrations.transformers import register_sageattention

    assert integrations.SageAttnProcessor is SageAttnProcessor
    assert integrations.apply_sageattn is apply_sageattn
    assert integrations.register_sageattention is register_sageattention
    assert set(integrations.__all__) <= set(dir(integrations))
    with pytest.raises(AttributeError, match="no_such_name"):
        integrations.no_such_name  # noqa: B018
