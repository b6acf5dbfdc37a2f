"""A tiny SST-2-shaped text dataset that several test modules train on (not a test module itself)."""


def write_tiny_text_set(folder):
    """A local SST-2-shaped dataset (sentence, label CSVs) and a word-level tokenizer saved beside it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["good", "bad", "great", "awful", "fine", "poor", "movie", "plot", "acting", "the", "was", "very"]
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(folder / "tokenizer")
    positive, negative = ["good", "great", "fine"], ["bad", "awful", "poor"]
    for split, n in (("train", 160), ("test", 40)):
        lines = ["sentence,label"]
        for i in range(n):
            sentiment = (positive if i % 2 else negative)[i % 3]
            lines.append(f"the {['movie', 'plot', 'acting'][i % 3]} was {'very ' * (i % 2)}{sentiment},{i % 2}")
        (folder / "data").mkdir(exist_ok=True)
        (folder / "data" / f"{split}.csv").write_text("\n".join(lines) + "\n")


def tiny_corpus(folder):
    """(the tokenizer, the training sentences as a "text" column) of the tiny text set, written into `folder`."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    write_tiny_text_set(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    lines = (folder / "data" / "train.csv").read_text().splitlines()[1:]
    return tokenizer, Dataset.from_dict({"text": [line.rsplit(",", 1)[0] for line in lines]})
