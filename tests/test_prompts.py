import pytest

from mrgen import prompts


def test_template_matches_the_paper():
    p = prompts.build_prompt("T1", "upper_abdomen", ["liver", "spleen"])
    assert p == ("T1 MRI; fat high signal, muscle intermediate signal, water low signal, fat bright, muscle grey, "
                 "water dark; upper abdomen; liver, spleen")


def test_aliases_and_organ_drop():
    assert prompts.canonical_modality("t2spir") == "T2-SPIR"
    assert prompts.canonical_modality("T1CE") == "T1c"
    p = prompts.build_prompt("FLAIR", "brain", ["edema"], drop_organs=True)
    assert p.endswith("; brain") and "edema" not in p


@pytest.mark.parametrize("mod", ["T1", "T1 in-phase", "T1 out-of-phase", "T2", "T2-SPIR", "T2 FS", "PD", "FLAIR", "T1c",
                                 "DWI", "ADC", "SWI", "bSSFP", "LGE", "CT"])
def test_required_modalities_present(mod):
    assert prompts.attributes(mod).count("signal") == 3


def test_unknown_modality_lists_known_and_how_to_add():
    with pytest.raises(prompts.PromptError, match="MRGEN_MODALITIES") as e:
        prompts.build_prompt("T9")
    assert "FLAIR" in str(e.value)


def test_user_modalities_file(tmp_path, monkeypatch):
    f = tmp_path / "extra.yaml"
    f.write_text("MRE: {imaging: MRI, fat: low, muscle: high, water: intermediate}\n")
    monkeypatch.setenv("MRGEN_MODALITIES", str(f))
    assert prompts.build_prompt("mre").startswith("MRE MRI; fat low signal, muscle high signal")


def test_regions_cover_paper_six_plus_brain_cardiac():
    keys = set(prompts.regions())
    assert {"upper_thorax", "middle_thorax", "lower_thorax", "upper_abdomen", "lower_abdomen", "pelvis", "brain", "cardiac"} <= keys
    with pytest.raises(prompts.PromptError, match="Known"):
        prompts.region_text("knee")
