"""JSON schemas of SciRIFF answers, for schema-constrained decoding: `schema_for(task)` is None for free text.

Where the shapes came from: the release allenai/SciRIFF at commit e396d00, each task's instructions and answer
part (after `|||`) in `sciriff/instructions/templates/<task>.yaml`, template 0 only (the release built its data
with `script/instructions/instantiate.py --templates 0`, `script/instructions/build_instructions.sh`), and the code
that builds each answer (`sciriff/instructions/formatters/*.py`, `script/data/process_*.py`). Answers the templates
write with Jinja's `tojson` have sorted keys; `properties` lists keys in the order the references use, so a grammar
that keeps schema order writes them as the references do. The references are `json.dumps` / `tojson` text: separators
", " and ": ", and non-ASCII (and, from `tojson`, < > & ') written as \\uXXXX escapes, so a grammar must allow general
\\u escapes to admit them (llguidance: `json_allow_general_unicode_escapes`; 178 of the 250 shared evidence_inference
references hold one). tests/test_schemas.py validates every reference answer of ../shared/sciriff/eval_sample and of
the built-in sample against these schemas.

The subset of draft 2020-12 used is what grammar libraries compile: type, properties, required,
additionalProperties, items, prefixItems, minItems, maxItems, enum, anyOf, null (no pattern, format or $ref).

Tasks without a schema: free text and labels (tasks.tsv output_context sentence, paragraph or label), and the three
table tasks whose answer is JSON Lines (chemtables_te, discomat_te, mltables_te: one JSON object per line, which no
single JSON value describes). Every task whose output_context is json has a schema.
"""
import copy
import re

_STRINGS = {"type": "array", "items": {"type": "string"}}


def _strings(min_items: int = 0) -> dict:
    """An array of strings, at least `min_items` long."""
    return dict(_STRINGS, minItems=min_items) if min_items else dict(_STRINGS)


def _enums(*values: str) -> dict:
    """An array of strings drawn from `values`."""
    return {"type": "array", "items": {"type": "string", "enum": list(values)}}


def _object(properties: dict) -> dict:
    """An object with exactly these keys, all required, in this order."""
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def _entities(*types: str) -> dict:
    """An NER answer: {type: [entity, ...]} with every type present (an empty list when none is found)."""
    return _object({t: _strings() for t in types})


def _tuples(*items: dict) -> dict:
    """An array of fixed-length arrays whose i-th element follows items[i] (relation tuples, findings)."""
    n = len(items)
    return {"type": "array", "items": {"type": "array", "prefixItems": list(items), "items": False,
                                       "minItems": n, "maxItems": n}}


def _verdict(*verdicts: str) -> dict:
    """A fact-checking answer: {"verdict": one of `verdicts`, "evidence": [sentence, ...]} (empty when NEI)."""
    return _object({"verdict": {"type": "string", "enum": list(verdicts)}, "evidence": _strings()})


def _or_null(schema: dict) -> dict:
    """`schema`, or JSON null."""
    return {"anyOf": [schema, {"type": "null"}]}


_STRING = {"type": "string"}
_SCIERC_RELATIONS = ("USED-FOR", "EVALUATE-FOR", "FEATURE-OF", "HYPONYM-OF", "PART-OF", "COMPARE", "CONJUNCTION")
_SYNTHESIS_ROLES = ("Atmospheric_Material", "Participant_Material", "Recipe_Precursor", "Recipe_Target",
                    "Solvent_Material")
_EFFECTS = ("significantly increased", "significantly decreased", "no significant difference")

# NER: the entity types are the values of the template's formatter `types_map` (bigbio_ner, genia_ner) or the
# scierc formatter's list; every type is a key, sorted as `tojson` writes them.
_SCHEMAS: dict[str, dict] = {
    "anat_em_ner": _entities("AnatomicalEntity"),
    "biored_ner": _entities("CellLine", "Chemical", "Disease", "Gene", "Species", "Variant"),
    "cdr_ner": _entities("Chemical", "Disease"),
    "chemdner_ner": _entities("Chemical"),
    "chemprot_ner": _entities("Chemical", "Protein"),
    "chia_ner": _entities("Condition", "Device", "Drug", "Measurement", "Mood", "Multiplier", "Negation",
                          "Observation", "Person", "Procedure", "Qualifier", "ReferencePoint", "Scope", "Temporal",
                          "Value", "Visit"),
    "ddi_ner": _entities("Brand", "Drug", "DrugGroup", "UnapprovedDrug"),
    "genia_ner": _entities("CellLine", "CellType", "DNA", "Protein", "RNA"),
    "gnormplus_ner": _entities("Gene"),
    "linnaeus_ner": _entities("Species"),
    "medmentions_ner": _entities(
        "AnatomicalStructure", "Bacterium", "BiologicFunction", "BiomedicalOccupationOrDiscipline", "BodySubstance",
        "BodySystem", "Chemical", "ClinicalAttribute", "Eukaryote", "Finding", "Food", "HealthCareActivity",
        "InjuryOrPoisoning", "IntellectualProduct", "MedicalDevice", "Organization", "PopulationGroup",
        "ProfessionalOrOccupationalGroup", "ResearchActivity", "SpatialConcept", "Virus"),
    "ncbi_ner": _entities("Disease"),
    "nlmchem_ner": _entities("Chemical"),
    "nlmgene_ner": _entities("Gene"),
    "pico_ner": _entities("Intervention", "Outcome", "Participant"),
    "scierc_ner": _entities("Generic", "Material", "Method", "Metric", "OtherScientificTerm", "Task"),
    # A flat list of ChEBI terms.
    "craftchem_ner": _strings(),
    # Lists of strings: `correct_ans.split(", ")` / `answer.split(", ")` always give at least one.
    "bioasq_list_qa": _strings(min_items=1),
    "data_reco_mcq_mc": _strings(min_items=1),
    # Multi-label classification into the template's categories (bigbio's class names; MultiCite's labels as its
    # formatter capitalizes them, future_work -> FutureWork).
    "bc7_litcovid_topic_classification": _enums("Epidemic Forecasting", "Treatment", "Prevention", "Mechanism",
                                                "Case Report", "Transmission", "Diagnosis"),
    "multicite_intent_classification": _enums("Background", "Motivation", "Uses", "Extends", "Similarities",
                                              "Differences", "FutureWork"),
    # Fact checking: template 0 writes `output_json_with_sentences` (evidence as sentences, not ids).
    "covidfact_entailment": _verdict("SUPPORT", "CONTRADICT"),
    "healthver_entailment": _verdict("SUPPORT", "CONTRADICT", "NEI"),
    "scifact_entailment": _verdict("SUPPORT", "CONTRADICT", "NEI"),
    # Qasper: {"answer", "evidence"} (evidence never empty: the formatter drops answers without any), or null (the
    # answer to an unanswerable question is the single word null).
    "qasper_abstractive_qa": _or_null(_object({"answer": _STRING, "evidence": _strings(min_items=1)})),
    "qasper_extractive_qa": _or_null(_object({"answer": _strings(min_items=1), "evidence": _strings(min_items=1)})),
    # Relations: [entity_a, entity_b, relation].
    "scierc_re": _tuples(_STRING, _STRING, {"type": "string", "enum": list(_SCIERC_RELATIONS)}),
    # ChemProt writes each relation as `"(a, REL, b)".strip('()').split(', ')`: an entity that holds ", " splits
    # into more parts, so the template's [a, REL, b] is only the usual case; any list of 3+ strings is accepted.
    "chemprot_re": {"type": "array", "items": _strings(min_items=3)},
    # [drug_1, ..., drug_n, category] with n >= 2; JSON Schema cannot pin the last of a variable-length array to
    # POS / NEG / COMB without exotic keywords, so the category is a string here.
    "drug_combo_extraction_re": {"type": "array", "items": _strings(min_items=3)},
    # Findings: [intervention, comparator (null when none is reported), outcome, effect, evidence].
    "evidence_inference": _tuples(_STRING, _or_null(_STRING), _STRING,
                                  {"type": "string", "enum": list(_EFFECTS)}, _STRING),
    # Synthesis events: {"arguments": [[text, role], ...] (at least one), "trigger": verb}.
    "annotated_materials_syntheses_events": {"type": "array", "items": _object({
        "arguments": dict(_tuples(_STRING, {"type": "string", "enum": list(_SYNTHESIS_ROLES)}), minItems=1),
        "trigger": _STRING})},
}

JSON_LINES_TASKS = frozenset({"chemtables_te", "discomat_te", "mltables_te"})
# The release tasks answered in free text or with a single label (tasks.tsv output_context sentence/paragraph/label).
_FREE_TEXT = frozenset({
    "acl_arc_intent_classification", "bioasq_factoid_qa", "bioasq_general_qa", "bioasq_yesno_qa",
    "chemsum_single_document_summarization", "covid_deepset_qa", "data_reco_mcq_sc",
    "mslr2022_cochrane_multidoc_summarization", "mslr2022_ms2_multidoc_summarization",
    "multixscience_multidoc_summarization", "mup_single_document_summarization", "pubmedqa_qa",
    "qasa_abstractive_qa", "scicite_classification", "scientific_lay_summarisation_elife_single_doc_summ",
    "scientific_lay_summarisation_plos_single_doc_summ", "scientific_papers_summarization_single_doc_arxiv",
    "scientific_papers_summarization_single_doc_pubmed", "scireviewgen_multidoc_summarization", "scitldr_aic"})
# The built-in sample's tasks (seqio_tasks/data/sample, written by seqio_tasks/sample_generator.py): sample_ner
# asks for four SciERC types in its own order; the other JSON ones share an eval task's shape.
_SAMPLE: dict[str, dict | None] = {
    "sample_ner": _object({t: _strings() for t in ("Method", "Task", "Material", "Metric")}),
    "sample_list_qa": _SCHEMAS["bioasq_list_qa"],
    "sample_entailment": _SCHEMAS["scifact_entailment"],
    "sample_classification": None,
    "sample_summarization": None,
}

TASKS_WITH_SCHEMA: frozenset[str] = frozenset(_SCHEMAS)
_KNOWN: dict[str, dict | None] = {**dict.fromkeys(_FREE_TEXT | JSON_LINES_TASKS), **_SCHEMAS, **_SAMPLE}
_FIRST_N = re.compile(r"_first\d+$")  # the SciTulu variant of a task: sciriff_4096_scierc_ner_first1000


def task_of(name: str) -> str:
    """The release or sample task a name denotes: itself, or the longest one it ends with (sciriff_4096_x -> x)."""
    base = _FIRST_N.sub("", name)
    if base in _KNOWN:
        return base
    matches = [task for task in _KNOWN if base.endswith("_" + task)]
    if not matches:
        raise ValueError(f"no SciRIFF task in the name {name!r}: give a release task (tasks.tsv `name`, e.g. "
                         f"scifact_entailment), a built-in sample task (sample_ner) or a registered SeqIO task "
                         f"(sciriff_4096_scifact_entailment, sciriff_sample_ner)")
    return max(matches, key=len)


def schema_for(task: str) -> dict | None:
    """The JSON schema (a fresh dict) of a task's answer, by release, sample or SeqIO name; None for free text."""
    schema = _KNOWN[task_of(task)]
    return None if schema is None else copy.deepcopy(schema)
