"""Chat templates -> text segments -> token ids + per-token loss mask (loss on assistant turns and their EOS).

One template table drives both implementations: the Python one (prompts for decoding, `data show`, tests)
and the TensorFlow one (the SeqIO pipeline), so training and evaluation tokenise prompts identically:
the tokens of a prompt are `prompt_ids(text, vocab)` (= [BOS, if the vocabulary has one] +
`vocab.encode(render_prompt(text))`), and each assistant turn is `vocab.encode(answer) + [EOS]`.
"""
import dataclasses

import tensorflow as tf

ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class Template:
    """Per role: text before a turn (first turn of a conversation / later turns) and after it."""

    first: dict
    later: dict
    suffix: dict


TEMPLATES = {
    # Tulu: <|user|>\n{input}\n<|assistant|>\n{output}</s>, turns separated by "\n".
    "tulu": Template(first={"system": "<|system|>\n", "user": "<|user|>\n", "assistant": ""},
                     later={"system": "\n<|system|>\n", "user": "\n<|user|>\n", "assistant": ""},
                     suffix={"system": "\n", "user": "\n<|assistant|>\n", "assistant": ""}),
    # Llama-2 chat: [INST] {input} [/INST] {output}</s> (no BOS: the vocabularies here have none by default).
    "llama2": Template(first={"system": "[INST] <<SYS>>\n", "user": "[INST] ", "assistant": ""},
                       later={"system": "[INST] <<SYS>>\n", "user": "[INST] ", "assistant": ""},
                       suffix={"system": "\n<</SYS>>\n\n", "user": " [/INST] ", "assistant": ""}),
    "plain": Template(first={"system": "", "user": "", "assistant": ""},
                      later={"system": "\n\n", "user": "\n\n", "assistant": ""},
                      suffix={"system": "\n\n", "user": "\n\n", "assistant": ""}),
}


def get_template(name: str) -> Template:
    """The chat template called `name` (tulu, llama2, plain)."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; expected one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def single_turn(user_text: str, answer: str) -> list[dict]:
    """A SciRIFF instance as chat messages: the whole `input` as the user turn, `output` as the answer."""
    return [{"role": "user", "content": user_text}, {"role": "assistant", "content": answer}]


def render_segments(messages: list[dict], template: str = "tulu") -> list[tuple[str, bool]]:
    """Messages -> [(text, is_assistant)]: the text of each turn with the template's markers around it."""
    t = get_template(template)
    out = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"message {i} has role {role!r}; expected one of {ROLES}")
        prefix = (t.first if i == 0 else t.later)[role]
        out.append((prefix + m["content"] + t.suffix[role], role == "assistant"))
    return out


def render_prompt(user_text: str, template: str = "tulu") -> str:
    """The generation prompt for one user turn, ending where the assistant's answer starts."""
    (text, _), = render_segments([{"role": "user", "content": user_text}], template)
    return text


def render_text(messages: list[dict], template: str = "tulu", eos: str = "</s>") -> str:
    """The whole conversation as one string, with `eos` written after each assistant turn (for display)."""
    return "".join(text + (eos if loss else "") for text, loss in render_segments(messages, template))


def bos_ids(vocab) -> list[int]:
    """[BOS] for vocabularies that define one (Llama-2's), else [] (the sample vocabulary has none)."""
    bos = vocab.bos_id
    return [bos] if bos is not None and bos >= 0 else []


def prompt_ids(user_text: str, vocab, template: str = "tulu") -> list[int]:
    """The token ids training puts before an answer: what decoding should be fed for one user turn."""
    return bos_ids(vocab) + list(vocab.encode(render_prompt(user_text, template)))


def last_answer_index(roles) -> int:
    """Index of the last assistant message: everything before it is the prompt (`inputs`), it is the answer."""
    answers = [i for i, r in enumerate(roles) if r == "assistant"]
    if not answers:
        raise ValueError(f"a chat needs an assistant turn to train on; roles were {list(roles)}")
    return answers[-1]


def split_ids(messages: list[dict], vocab, template: str = "tulu") -> tuple[list[int], list[int], list[int]]:
    """(inputs, targets, inputs loss mask): the chat's ids before the last answer, that answer + EOS, and 1 on the
    earlier assistant turns (+ their EOS) inside `inputs`. Turns after the last answer are not part of it."""
    last = last_answer_index([m.get("role") for m in messages])
    ids, mask = tokenize_messages(messages[: last + 1], vocab, template)
    start = len(tokenize_messages(messages[:last], vocab, template)[0]) if last else len(bos_ids(vocab))
    return ids[:start], ids[start:], mask[:start]


def tokenize_messages(messages: list[dict], vocab, template: str = "tulu") -> tuple[list[int], list[int]]:
    """Token ids and loss mask (1 on assistant tokens and the EOS closing each assistant turn, else 0)."""
    ids = bos_ids(vocab)
    mask = [0] * len(ids)
    for text, loss in render_segments(messages, template):
        piece = list(vocab.encode(text)) + ([vocab.eos_id] if loss else [])
        ids += piece
        mask += [int(loss)] * len(piece)
    return ids, mask


# --- TensorFlow: the same rendering inside tf.data ---------------------------------------------------


def _by_role(roles: tf.Tensor, table: dict) -> tf.Tensor:
    out = tf.fill(tf.shape(roles), "")
    for role in ROLES:
        out = tf.where(tf.equal(roles, role), table[role], out)
    return out


def render_segments_tf(roles: tf.Tensor, contents: tf.Tensor, template: str = "tulu"):
    """TF version of render_segments: 1-D role/content strings -> (segment texts, int32 is-assistant)."""
    t = get_template(template)
    first = tf.equal(tf.range(tf.size(roles)), 0)
    prefix = tf.where(first, _by_role(roles, t.first), _by_role(roles, t.later))
    texts = tf.strings.join([prefix, contents, _by_role(roles, t.suffix)])
    return texts, tf.cast(tf.equal(roles, "assistant"), tf.int32)


def tokenize_segments_tf(texts: tf.Tensor, is_assistant: tf.Tensor, vocab):
    """TF version of tokenize_messages for rendered segments: (ids int32 [n], loss mask int32 [n])."""
    ragged = tf.cast(vocab.encode_tf(texts), tf.int32)
    if not isinstance(ragged, tf.RaggedTensor):
        ragged = tf.RaggedTensor.from_tensor(ragged)
    eos = tf.RaggedTensor.from_row_lengths(
        tf.fill([tf.reduce_sum(is_assistant)], tf.constant(vocab.eos_id, tf.int32)),
        tf.cast(is_assistant, tf.int64))
    ragged = tf.concat([ragged, eos], axis=1)
    ids = ragged.flat_values
    mask = tf.repeat(is_assistant, tf.cast(ragged.row_lengths(), tf.int32))
    bos = tf.constant(bos_ids(vocab), tf.int32)
    return tf.concat([bos, ids], 0), tf.concat([tf.zeros_like(bos), mask], 0)


def split_segments_tf(texts: tf.Tensor, is_assistant: tf.Tensor, vocab):
    """TF version of split_ids for rendered segments: (inputs ids, targets ids, inputs loss mask), int32 [n]."""
    positions = tf.where(tf.equal(is_assistant, 1))[:, 0]
    tf.debugging.assert_positive(tf.size(positions), message="a chat needs an assistant turn to train on")
    last = tf.cast(positions[-1], tf.int32)
    ids, mask = tokenize_segments_tf(texts[: last + 1], is_assistant[: last + 1], vocab)
    ragged = tf.cast(vocab.encode_tf(texts[last]), tf.int32)
    answer_len = tf.size(ragged) + 1  # + EOS
    start = tf.size(ids) - answer_len
    return ids[:start], ids[start:], mask[:start]
