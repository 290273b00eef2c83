"""Generates the built-in SciRIFF-format sample: synthetic scientific text from templates and word lists.

Answers copy spans from the document, so a tiny model can learn them in a few hundred steps.
Everything is driven by one `random.Random(seed)`, so the output is byte-identical on every machine.
"""
import json
import random

METHODS = ["conditional random field", "graph neural network", "transformer encoder", "support vector machine",
           "recurrent neural network", "beam search decoder", "variational autoencoder", "random forest",
           "attention mechanism", "contrastive pretraining", "hidden Markov model", "dependency parser",
           "convolutional network", "gradient boosting", "sparse autoencoder", "logistic regression"]
TASKS = ["named entity recognition", "machine translation", "relation extraction", "image segmentation",
         "question answering", "speech recognition", "text summarization", "protein folding prediction",
         "citation recommendation", "semantic parsing", "document classification", "coreference resolution"]
MATERIALS = ["PubMed abstracts", "the CoNLL corpus", "Wikipedia articles", "the SciERC dataset",
             "clinical notes", "arXiv papers", "the Penn Treebank", "news articles", "patent documents",
             "the GENIA corpus"]
METRICS = ["F1 score", "BLEU", "accuracy", "precision", "recall", "perplexity", "AUC", "mean average precision"]
GENES = ["BRCA1", "BRCA2", "TP53", "EGFR", "KRAS", "MYC", "PTEN", "APOE", "CFTR", "HER2", "JAK2", "BRAF",
         "ALK", "VEGFA", "IL6", "TNF", "NOTCH1", "SOX2", "MLH1", "ATM"]
DISEASES = ["breast cancer", "lung adenocarcinoma", "cystic fibrosis", "Alzheimer disease", "colorectal cancer",
            "melanoma", "type 2 diabetes", "rheumatoid arthritis", "glioblastoma", "Parkinson disease"]
SYMPTOMS = ["fatigue", "fever", "joint pain", "weight loss", "headache", "dyspnea", "nausea", "skin rash",
            "memory loss", "muscle weakness", "chest pain", "insomnia"]
DRUGS = ["metformin", "aspirin", "tamoxifen", "imatinib", "cisplatin", "rituximab", "statins", "vitamin D",
         "lithium", "insulin", "ibuprofen", "dexamethasone"]
OUTCOMES = ["mortality", "tumor growth", "blood pressure", "inflammation", "insulin resistance",
            "cognitive decline", "hospital readmission", "bone density", "viral load", "relapse rate"]
POPULATIONS = ["elderly patients", "children", "pregnant women", "adults with obesity", "smokers",
               "postmenopausal women", "patients with kidney disease", "healthy volunteers"]

# Citation intent: the label is signalled by cue phrases a model can pick up.
INTENTS = {
    "Background": ["Previous studies have shown that {m} is widely used for {t} [CITATION].",
                   "{M} has been studied extensively in the context of {t} [CITATION]."],
    "Uses": ["We use the {m} implementation released by [CITATION] for {t}.",
             "Following [CITATION], we apply a {m} to {t}."],
    "CompareOrContrast": ["Unlike [CITATION], who rely on a {m}, our approach to {t} needs no labels.",
                          "Our results on {t} are higher than those reported by [CITATION] with a {m}."],
    "Motivation": ["As [CITATION] pointed out, {t} remains difficult, which motivates our {m}.",
                   "The lack of good {t} systems noted by [CITATION] inspired this work on a {m}."],
    "Extends": ["We extend the {m} of [CITATION] to handle {t}.",
                "Our model builds on the {m} proposed by [CITATION], adding support for {t}."],
    "FutureWork": ["In future work, we plan to combine our approach with the {m} of [CITATION] for {t}.",
                   "Applying the {m} of [CITATION] to {t} is left for future work."],
}

NER_INSTRUCTION = (
    "You will be shown an abstract from a computer science research paper. Given this abstract, your task is "
    "to extract all unique entities with the following types: \"Method\", \"Task\", \"Material\", \"Metric\".\n\n"
    "Please return the output as a JSON object of the format: {\"type1\" : [\"example_entity\", ...], ...}. "
    "Entity types with no matching entities should be assigned an empty array [].\n\n"
    "Only output the JSON object and do not include any additional text.\n\nAbstract:\n\n")
LIST_QA_INSTRUCTION = (
    "Below are a collection of excerpts from biomedical research articles. Your task is to answer a question "
    "based on these excerpts. Your response should be formatted as a `json` array. Only include answers that "
    "are mentioned in the provided excerpts. Do not include any text in your response other than the answer "
    "array.\n\nContext: ")
CLASSIFICATION_INSTRUCTION = (
    "You will be presented with a citation segment from the section of an NLP research paper. Classify the "
    "intent behind this citation by choosing from one of the following categories:\n\n"
    "- Background\n- Uses\n- CompareOrContrast\n- Motivation\n- Extends\n- FutureWork\n\n"
    "Your answer should be a single word from the list above.\n\nSection: {section}\n\nContext: ")
ENTAILMENT_INSTRUCTION = (
    "You will be shown a scientific claim, and the abstract of a biomedical research paper. Each sentence from "
    "the abstract will be on a separate line. Your task is to return a JSON object with two fields:\n\n"
    "- \"verdict\": \"SUPPORT\", \"CONTRADICT\" or \"NEI\".\n"
    "- \"evidence\": An array of sentences copied verbatim from the abstract. If the verdict was \"NEI\", "
    "then return an empty array.\n\nYour response should not include any text other than the json.\n\n")
SUMMARIZATION_INSTRUCTION = (
    "Below is the abstract of a computer science research paper. Write a one-sentence summary of the paper's "
    "main contribution. Do not include any text other than the summary.\n\nAbstract:\n")

METADATA = {
    "sample_ner": dict(domains=["artificial_intelligence"], input_context="paragraph", output_context="json",
                       source_type="single_source", task_family="ie.named_entity_recognition"),
    "sample_list_qa": dict(domains=["biomedicine"], input_context="multiple_paragraphs", output_context="json",
                           source_type="multiple_source", task_family="qa.abstractive"),
    "sample_classification": dict(domains=["artificial_intelligence"], input_context="multiple_paragraphs",
                                  output_context="label", source_type="single_source",
                                  task_family="classification"),
    "sample_entailment": dict(domains=["biomedicine", "clinical_medicine"], input_context="paragraph",
                              output_context="json", source_type="single_source", task_family="entailment"),
    "sample_summarization": dict(domains=["artificial_intelligence"], input_context="paragraph",
                                 output_context="sentence", source_type="single_source",
                                 task_family="summarization"),
}


def _ner(rng):
    m1, m2 = rng.sample(METHODS, 2)
    t, mat, met = rng.choice(TASKS), rng.choice(MATERIALS), rng.choice(METRICS)
    sentences = [f"We present a {m1} for {t}.",
                 rng.choice([f"Our model combines the {m1} with a {m2}.", f"A {m2} is used to encode the input."]),
                 f"Experiments on {mat} show that the approach improves {met} over strong baselines.",
                 rng.choice(["The code is publicly available.", "We also analyse common errors.",
                             "Training takes less than one day on a single GPU."])]
    entities = {"Method": [m1, m2], "Task": [t], "Material": [mat], "Metric": [met]}
    if rng.random() < 0.3:  # some abstracts name no metric: the key stays with an empty list
        sentences[2] = f"Experiments on {mat} show clear gains over strong baselines."
        entities["Metric"] = []
    return NER_INSTRUCTION + " ".join(sentences), json.dumps(entities)


def _list_qa(rng):
    disease = rng.choice(DISEASES)
    if rng.random() < 0.5:
        answers, noun = rng.sample(GENES, rng.randint(2, 4)), ("genes", "mutations in")
        question = f"Which genes are associated with {disease}?"
        other = rng.sample([g for g in GENES if g not in answers], 2)
    else:
        answers, noun = rng.sample(SYMPTOMS, rng.randint(2, 4)), ("symptoms", "")
        question = f"What are the main symptoms of {disease}?"
        other = rng.sample([s for s in SYMPTOMS if s not in answers], 2)
    joined = ", ".join(answers[:-1]) + " and " + answers[-1]
    lines = [f"Patients with {disease} frequently present with {noun[1]} {joined}.".replace("  ", " "),
             f"The role of {other[0]} in {rng.choice(DISEASES)} remains unclear.",
             f"In a cohort of {rng.randint(20, 900)} cases, {noun[0]} such as {joined} were reported.",
             f"No association was found between {other[1]} and {disease}."]
    rng.shuffle(lines)
    return LIST_QA_INSTRUCTION + "\n".join(lines) + f"\n\nQuestion:\n{question}", json.dumps(answers)


def _classification(rng):
    label = rng.choice(sorted(INTENTS))
    m, t = rng.choice(METHODS), rng.choice(TASKS)
    cited = rng.choice(INTENTS[label]).format(m=m, M=m[0].upper() + m[1:], t=t)
    before = rng.choice([f"Recent work on {rng.choice(TASKS)} has grown quickly.",
                         f"We evaluate on {rng.choice(MATERIALS)}.", ""])
    section = rng.choice(["introduction", "related work", "method", "experiments", "conclusion"])
    context = (before + " " + cited).strip()
    return CLASSIFICATION_INSTRUCTION.format(section=section) + context, label


def _entailment(rng):
    drug, outcome, pop = rng.choice(DRUGS), rng.choice(OUTCOMES), rng.choice(POPULATIONS)
    claim = f"{drug[0].upper() + drug[1:]} reduces {outcome} in {pop}."
    verdict = rng.choice(["SUPPORT", "CONTRADICT", "NEI"])
    n = rng.randint(60, 2000)
    abstract = [f"OBJECTIVE To assess the effect of {drug} in {pop}.",
                f"DESIGN Randomised controlled trial of {n} participants followed for {rng.randint(2, 10)} years."]
    if verdict == "SUPPORT":
        key = f"RESULTS Treatment with {drug} significantly reduced {outcome} compared with placebo."
    elif verdict == "CONTRADICT":
        key = f"RESULTS Treatment with {drug} did not reduce {outcome} and was associated with an increase."
    else:
        other = rng.choice([o for o in OUTCOMES if o != outcome])
        key = f"RESULTS Treatment with {drug} was well tolerated and changes in {other} were small."
    abstract += [key, rng.choice(["CONCLUSIONS Larger trials are needed.",
                                  f"CONCLUSIONS These findings inform the care of {pop}."])]
    evidence = [] if verdict == "NEI" else [key]
    text = ENTAILMENT_INSTRUCTION + f"Claim: {claim}\n\nAbstract:\n" + "\n".join(abstract)
    return text, json.dumps({"verdict": verdict, "evidence": evidence})


def _summarization(rng):
    m, t, mat, met = rng.choice(METHODS), rng.choice(TASKS), rng.choice(MATERIALS), rng.choice(METRICS)
    summary = f"This paper proposes a {m} for {t}."
    abstract = [rng.choice([f"{t[0].upper() + t[1:]} is a central problem in natural language processing.",
                            f"Progress in {t} has been limited by the lack of labelled data."]),
                f"In this paper, we propose a {m} for {t}.",
                f"We evaluate it on {mat} and report {met}.",
                rng.choice(["The results improve on prior work.", "The method is simple and fast."])]
    return SUMMARIZATION_INSTRUCTION + " ".join(abstract), summary


GENERATORS = {"sample_ner": _ner, "sample_list_qa": _list_qa, "sample_classification": _classification,
              "sample_entailment": _entailment, "sample_summarization": _summarization}


def generate(n_per_task: dict, seed: int = 0) -> dict:
    """Return {split: [instance, ...]} for the given {split: instances per task}, deterministic in `seed`."""
    rng = random.Random(seed)
    out = {}
    for split, n in n_per_task.items():
        rows = []
        for task, gen in GENERATORS.items():
            for i in range(n):
                text, answer = gen(rng)
                rows.append({"input": text, "output": answer, "metadata": dict(METADATA[task]),
                             "_instance_id": f"{task}:{split}:{i}"})
        rng.shuffle(rows)  # interleave tasks so any prefix of the file covers all five
        out[split] = rows
    return out
