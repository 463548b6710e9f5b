"""Bad inputs against the entry point, table-driven: each must end in exit code 2 with one
``error:`` line holding the expected fragment, no traceback and no partial file left behind.

Most rows call ``run_recbole_etegrec.main`` in-process (fast); a few run the real script.
"""
import glob
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ML100K_ITEMS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import run_recbole_etegrec  # noqa: E402

LLAMA_70B = {"hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
             "intermediate_size": 28672}
LLAMA_13B_CONFIG = {"model_type": "llama", "hidden_size": 5120, "num_hidden_layers": 40, "num_attention_heads": 40,
                    "num_key_value_heads": 40, "intermediate_size": 13824, "vocab_size": 32000,
                    "max_position_embeddings": 4096}
HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"
TRAIN = ["--epochs=2", "--cycle=2", "--warm_epoch=0", "--finetune_epochs=1"]
RESUMED = ["--cycle=1", "--debug_samples=25"]  # the settings the resumed ETEGRec checkpoint was trained with

# (id, model, extra arguments ({name} = an artifact path, {{ }} = a brace), expected fragment of the error line)
CASES = [
    # values out of range (validated in Config, before any data is read)
    ("epochs_negative", "ETEGRec", ["--epochs=-1"], "'epochs' from the command line must be a positive integer"),
    ("epochs_zero", "SASRec", ["--epochs=0"], "'epochs' from the command line must be a positive integer"),
    ("epochs_not_int", "SASRec", ["--epochs=abc"], "'epochs' from the command line expects int"),
    ("num_beams_zero", "ETEGRec", ["--num_beams=0"], "'num_beams' from the command line must be a positive integer"),
    ("num_beams_negative", "TIGER", ["--num_beams=-3"], "'num_beams' from the command line must be a positive"),
    ("chunk_zero", "ETEGRec", ["--generate_chunk_size=0"], "'generate_chunk_size' from the command line must be"),
    ("code_length_1", "ETEGRec", ["--code_length=1"], "'code_length' from the command line must be >= 2"),
    ("heads_not_dividing", "ETEGRec", ["--config_files={odd_heads}"], "'llama_config.hidden_size' from config file"),
    ("sasrec_heads", "SASRec", ["--hidden_size=33"],
     "'hidden_size' from the command line must be a multiple of n_heads"),
    ("lora_r_zero", "ETEGRec", ["--lora_r=0"], "'lora_r' from the command line must be a positive integer"),
    ("lr_rec_negative", "ETEGRec", ["--lr_rec=-0.001"], "'lr_rec' from the command line must be a positive number"),
    ("lr_id_zero", "ETEGRec", ["--lr_id=0"], "'lr_id' from the command line must be a positive number"),
    ("learning_rate_negative", "SASRec", ["--learning_rate=-1"], "'learning_rate' from the command line must be"),
    ("train_batch_zero", "ETEGRec", ["--train_batch_size=0"], "'train_batch_size' from the command line must be"),
    ("eval_batch_zero", "TIGER", ["--eval_batch_size=0"], "'eval_batch_size' from the command line must be"),
    ("debug_samples_zero", "SASRec", ["--debug", "--debug_samples", "0"], "'debug_samples' from config_dict must be"),
    ("max_len_zero", "SASRec", ["--MAX_ITEM_LIST_LENGTH=0"], "'MAX_ITEM_LIST_LENGTH' from the command line must be"),
    ("cycle_zero", "ETEGRec", ["--cycle=0"], "'cycle' from the command line must be a positive integer"),
    ("warm_negative", "ETEGRec", ["--warm_epoch=-1"], "'warm_epoch' from the command line must be >= 0"),
    ("tau_zero", "ETEGRec", ["--tau=0"], "'tau' from the command line must be a positive number"),
    ("dropout_above_1", "TIGER", ["--dropout_rate=1.5"], "'dropout_rate' from the command line must be a probability"),
    ("precision_unknown", "ETEGRec", ["--precision=fp64"], "'precision' from the command line must be one of"),
    ("emb_source_unknown", "TIGER", ["--item_emb_source=web"],
     "'item_emb_source' from the command line must be one of"),
    ("optimizer_unknown", "ETEGRec", ["--optimizer=sgd"],
     "'optimizer' from the command line must be adamw or adamw8bit"),
    ("scheduler_unknown", "TIGER", ["--lr_scheduler=linear"], "'lr_scheduler' from the command line must be one of"),
    ("eval_step_negative", "SASRec", ["--eval_step=-1"], "'eval_step' from the command line must be >= 0"),
    # what is measured: topk, metrics, valid_metric, eval_args.mode, num_beams (Config, before any data is read)
    ("beams_below_topk", "ETEGRec", ["--num_beams=5"],
     "'num_beams' from the command line is 5, below the largest 'topk' cut-off 10"),
    ("beams_below_topk_tiger", "TIGER", ["--num_beams=9"],
     "'num_beams' from the command line is 9, below the largest 'topk' cut-off 10"),
    ("beams_below_topk_yaml", "TIGER", ["--config_files={topk20_yaml}"],
     "is 10, below the largest 'topk' cut-off 20 (topk [5, 20] from config file"),
    ("topk_word", "ETEGRec", ["--topk=ten"], "'topk' from the command line must be a positive integer or a list"),
    ("topk_zero", "SASRec", ["--topk=[0,5]"], "'topk' from the command line must be a positive integer or a list"),
    ("topk_float", "Pop", ["--topk=[5.5]"], "'topk' from the command line must be a positive integer or a list"),
    ("topk_empty", "TIGER", ["--topk=[]"], "'topk' from the command line must be a positive integer or a list"),
    ("metric_typo", "SASRec", ["--metrics=[Recall,NDGC]"],
     "'metrics' from the command line names 'NDGC', which is not a RecBole metric: did you mean 'NDCG'?"),
    ("metric_typo_yaml", "ETEGRec", ["--config_files={metric_typo_yaml}"],
     "names 'Recal', which is not a RecBole metric: did you mean 'Recall'?"),
    ("metrics_empty", "Pop", ["--metrics=[]"], "'metrics' from the command line must be a list of RecBole metric"),
    ("valid_metric_cutoff", "SASRec", ["--valid_metric=NDCG@20"],
     "'valid_metric' from the command line is 'NDCG@20', but topk [5, 10]"),
    ("valid_metric_not_computed", "ETEGRec", ["--valid_metric=MRR@10"],
     "is 'MRR@10', but metrics ['Recall', 'NDCG'] (from properties/dataset/ml-100k.yaml) does not compute MRR"),
    ("valid_metric_no_cutoff", "TIGER", ["--valid_metric=NDCG"],
     "'valid_metric' from the command line is 'NDCG', but RecBole reports NDCG per cut-off"),
    ("valid_metric_typo", "Pop", ["--valid_metric=NDGC@10"],
     "is 'NDGC@10', not a RecBole metric: did you mean 'NDCG'?"),
    ("value_metric_full", "SASRec", ["--metrics=[AUC]", "--valid_metric=AUC"],
     "'metrics' from the command line holds the value metric AUC, which needs labeled scores"),
    ("metrics_mixed", "Pop", ["--metrics=[Recall,AUC]"], "mixes a ranking metric (Recall) with a value metric (AUC)"),
    ("code_model_labeled", "TIGER", ["--eval_args={{'mode':'labeled'}}"],
     "'eval_args' from the command line sets mode 'labeled' for valid, but TIGER ranks all items by beam search "
     "('full') or sampled candidates by likelihood ('uni100', 'pop100', any uniN/popN)"),
    ("code_model_labeled_test", "ETEGRec", ["--eval_args={{'mode':{{'valid':'full','test':'labeled'}}}}"],
     "sets mode 'labeled' for test, but ETEGRec ranks all items by beam search"),
    ("code_model_gauc", "ETEGRec", ["--metrics=[Recall,NDCG,GAUC]"], "holds GAUC, which ranks every item"),
    ("code_model_gauc_tiger", "TIGER", ["--metrics=[GAUC]", "--valid_metric=GAUC"], "holds GAUC, which ranks every"),
    ("sampled_topk", "SASRec", ["--eval_args={{'mode':'uni100'}}", "--topk=[10,200]"],
     "'topk' from the command line has cut-off 200, but eval_args.mode (valid: uni100) samples 100 negatives"),
    ("sampled_topk_pop", "Pop", ["--eval_args={{'mode':'pop50'}}", "--topk=[10,60]"], "(valid: pop50) samples 50"),
    # ... and once the dataset is built (its item count), before any model
    ("topk_all_items", "Pop", ["--topk=[5,10,1682]"],
     "'topk' from the command line has cut-off 1682, but ml-100k has 1682 items"),
    ("topk_over_items", "SASRec", ["--topk=[10,5000]"], "has cut-off 5000, but ml-100k has 1682 items"),
    # typos: unknown keys name the closest known key
    ("typo_num_beam", "ETEGRec", ["--num_beam=1"],
     "unknown config key 'num_beam' from the command line: did you mean 'num_beams'?"),
    ("typo_lr_recc", "ETEGRec", ["--lr_recc=5.0"],
     "unknown config key 'lr_recc' from the command line: did you mean 'lr_rec'?"),
    ("typo_in_yaml", "ETEGRec", ["--config_files={typo_yaml}"], "unknown config key 'num_beam' from config file"),
    ("typo_tiger_layers", "TIGER", ["--num_layer=2"], "unknown config key 'num_layer'"),
    # nested keys: a dict merges over its default key by key; its own keys are checked like top-level ones
    ("llama_config_typo", "ETEGRec", ["--config_files={llama_typo_yaml}"],
     "unknown key 'hidden_sizes' in config key 'llama_config' from config file"),
    ("llama_config_typo_cmd", "ETEGRec", ["--llama_config={{'num_hidden_layer':1}}"],
     "unknown key 'num_hidden_layer' in config key 'llama_config' from the command line: did you mean "
     "'num_hidden_layers'?"),
    ("llama_config_vocab", "ETEGRec", ["--llama_config={{'vocab_size':32000}}"],
     "'llama_config.vocab_size' from the command line is set by the plugin"),
    ("eval_args_typo", "SASRec", ["--eval_args={{'mdoe':'uni100'}}"],
     "unknown key 'mdoe' in config key 'eval_args' from the command line: did you mean 'mode'?"),
    ("eval_args_typo_yaml", "TIGER", ["--config_files={eval_typo_yaml}"],
     "unknown key 'group' in config key 'eval_args' from config file"),
    ("eval_mode_phase_typo", "Pop", ["--eval_args={{'mode':{{'vaild':'uni100'}}}}"],
     "unknown key 'vaild' in config key 'eval_args.mode' from the command line: did you mean 'valid'?"),
    ("eval_split_unknown", "SASRec", ["--eval_args={{'split':{{'LOO':'valid_and_test'}}}}"],
     "unknown key 'LOO' in config key 'eval_args.split' from the command line: it takes LS, RS, TS"),
    ("eval_order_bad", "ETEGRec", ["--eval_args={{'order':'time'}}"],
     "'eval_args.order' from the command line must be RO (random order) or TO (time order)"),
    ("clip_typo", "TIGER", ["--clip_grad_norm={{'max_nrom':1.0}}"],
     "unknown key 'max_nrom' in config key 'clip_grad_norm' from the command line: did you mean 'max_norm'?"),
    ("load_col_typo", "SASRec", ["--load_col={{'itme':['item_id']}}"],
     "unknown key 'itme' in config key 'load_col' from the command line: did you mean 'item'?"),
    ("neg_sample_typo", "Pop", ["--train_neg_sample_args={{'sample_nm':2}}"], "did you mean 'sample_num'?"),
    # a backbone that cannot fit the device stops before anything is allocated, with both numbers
    ("llama_too_big", "ETEGRec", ["--config_files={llama_70b_yaml}"],
     "has 68.45B parameters: training needs about 1095.2 GB (68.45B trainable parameters x 4 (weights, "
     "gradients, 2 AdamW moments) x 4 bytes (fp32)"),
    ("llama_path_too_big", "ETEGRec", ["--llama_path={llama13b_dir}"],
     "has 12.85B parameters: training needs about 203.7 GB"),
    # command line, files, names
    ("unknown_model", "SASRek", [], "unknown model 'SASRek'"),
    ("stray_argument", "SASRec", ["oops"], "unrecognized argument 'oops'"),
    ("missing_config_file", "SASRec", ["--config_files=/nonexistent/x.yaml"],
     "does not exist: check the --config_files"),
    ("invalid_yaml", "SASRec", ["--config_files={broken_yaml}"], "broken.yaml' is not valid YAML (line 3)"),
    ("yaml_not_mapping", "SASRec", ["--config_files={list_yaml}"], "must be a YAML mapping"),
    ("llama_path_bert", "ETEGRec", ["--llama_path={bert_dir}"], "holds a 'bert' model, not LLaMA"),
    ("llama_path_missing", "ETEGRec", ["--llama_path=/nonexistent/llama"], "no config.json"),
    # data files
    ("dataset_unknown", "Pop", ["--dataset", "nosuch", "--data_path={data}"], "unknown dataset 'nosuch'"),
    ("dataset_no_inter", "Pop", ["--dataset", "nointer", "--data_path={data}"], "has no 'nointer.inter'"),
    ("inter_empty", "Pop", ["--dataset", "empty", "--data_path={data}"], "empty.inter is empty"),
    ("inter_header_only", "Pop", ["--dataset", "headeronly", "--data_path={data}"], "has a header but no interactions"),
    ("inter_not_utf8", "Pop", ["--dataset", "latin1", "--data_path={data}"], "latin1.inter: line 3 is not UTF-8"),
    ("inter_short_line", "Pop", ["--dataset", "short", "--data_path={data}"], "short.inter: line 3 has 2 fields"),
    ("inter_not_number", "Pop", ["--dataset", "nonnum", "--data_path={data}"],
     "column 'timestamp:float' holds 'yesterday'"),
    ("inter_bom", "Pop", ["--dataset", "bom", "--data_path={data}"], "bom.inter starts with a UTF-8 byte-order mark"),
    ("inter_no_time", "SASRec", ["--dataset", "notime", "--data_path={data}"],
     "notime.inter has no 'timestamp' column (TIME_FIELD) (eval_args.order TO orders each user's interactions"),
    ("inter_duplicate_column", "Pop", ["--dataset", "dupcol", "--data_path={data}"],
     "dupcol.inter: line 1 names column 'item_id' more than once"),
    ("inter_float_item", "ETEGRec", ["--dataset", "floatitem", "--data_path={data}"],
     "column 'item_id:float' (ITEM_ID_FIELD) must be 'item_id:token' (ids are names, not numbers)"),
    ("inter_no_user_column", "Pop", ["--dataset", "uidcol", "--data_path={data}"],
     "uidcol.inter has no 'user_id' column (USER_ID_FIELD): set USER_ID_FIELD to your column"),
    ("inter_nan_time", "SASRec", ["--dataset", "nantime", "--data_path={data}"],
     "nantime.inter: 2 lines have an empty, NaN or inf 'timestamp:float' (lines 3, 4)"),
    ("inter_empty_time", "TIGER", ["--dataset", "emptytime", "--data_path={data}"],
     "emptytime.inter: 1 lines have an empty, NaN or inf 'timestamp:float' (lines 3)"),
    ("inter_empty_item", "Pop", ["--dataset", "emptyitem", "--data_path={data}"],
     "emptyitem.inter: 2 lines have an empty 'item_id:token' (lines 3, 4): give every interaction a user and an item"),
    ("load_col_no_item", "SASRec", ["--load_col={{'inter':['user_id','timestamp']}}"],
     "config key 'load_col' reads inter columns ['user_id', 'timestamp'] without 'item_id' (ITEM_ID_FIELD)"),
    ("load_col_no_time", "ETEGRec", ["--load_col={{'inter':['user_id','item_id']}}"],
     "without 'timestamp' (TIME_FIELD): add it to load_col.inter"),
    ("inter_users_too_short", "SASRec", ["--dataset", "twoeach", "--data_path={data}"],
     "twoeach.inter: the validation split of its 9 users is empty (leave-one-out holds out"),
    ("inter_users_too_short_code", "ETEGRec", ["--dataset", "twoeach", "--data_path={data}"],
     "the validation split of its 9 users is empty"),
    ("inter_bad_header", "Pop", ["--dataset", "badheader", "--data_path={data}"],
     "header column 'user_id' must look like"),
    # item embeddings and tokenizer
    ("emb_nan", "ETEGRec", ["--item_emb_file={nan_npy}"], "hold NaN/inf in 1 rows (e.g. rows [5])"),
    ("emb_inf", "TIGER", ["--item_emb_file={inf_npy}"], "hold NaN/inf in 1 rows (e.g. rows [7])"),
    ("emb_identical", "TIGER", ["--item_emb_file={same_npy}"], "items share one identical embedding"),
    ("emb_wrong_shape", "ETEGRec", ["--item_emb_file={short_npy}"], "have shape (10, 16)"),
    ("emb_not_npy", "ETEGRec", ["--item_emb_file={garbage}"], "is not a readable .npy array"),
    ("emb_missing", "ETEGRec", ["--item_emb_file=/nonexistent/e.npy"],
     "item_emb_file '/nonexistent/e.npy' does not exist"),
    ("tokenizer_path_garbage", "TIGER", ["--tokenizer_path={garbage}"], "cannot be read ("),
    # resume files
    ("resume_missing", "ETEGRec", ["--resume_file=/nonexistent/x.pth"],
     "resume_file '/nonexistent/x.pth' does not exist"),
    ("resume_random_bytes", "ETEGRec", ["--resume_file={garbage}"], "cannot be read"),
    ("resume_truncated", "ETEGRec", ["--resume_file={truncated}"], "it is truncated or not a checkpoint"),
    ("resume_other_model", "ETEGRec", ["--resume_file={sasrec_ckpt}"], "is a SASRec checkpoint, not ETEGRec"),
    ("resume_other_size", "ETEGRec", ["--resume_file={etegrec_ckpt}", "--config_files={wide_llama}",
                                      *RESUMED, "--resume_allow_change=True"],
     "does not fit this model's size/settings (size mismatch"),
    ("resume_other_data", "ETEGRec", ["--resume_file={etegrec_ckpt}", "--cycle=1", "--resume_allow_change=True"],
     "was trained on other interactions than dataset 'ml-100k' holds now (another digest)"),  # 25 users, now 40
    # a resume changes nothing but epochs, stopping and output settings, unless told to
    ("resume_changed_lr", "ETEGRec", ["--resume_file={etegrec_ckpt}", *RESUMED, "--lr_rec=0.01"],
     "was trained with other settings (lr_rec: 0.001 -> 0.01): resume with the settings that wrote it"),
    ("resume_changed_seed", "ETEGRec", ["--resume_file={etegrec_ckpt}", *RESUMED, "--seed=7"],
     "was trained with other settings (seed: 2020 -> 7)"),
    ("resume_changed_users", "ETEGRec", ["--resume_file={etegrec_ckpt}", "--cycle=1"],
     "was trained with other settings (debug_samples: 25 -> 40)"),
    ("resume_changed_model_size", "ETEGRec", ["--resume_file={etegrec_ckpt}", *RESUMED,
                                              "--config_files={wide_llama}"], "'hidden_size': 32"),
    # output folders
    ("checkpoint_dir_unwritable", "ETEGRec", ["--checkpoint_dir={unwritable}"], "checkpoint_dir '"),
    ("benchmark_dir_unwritable", "SASRec", ["--model_list", "SASRec,Pop", "--benchmark_dir={unwritable}"],
     "benchmark_dir '"),
    # training that diverges: stopped with the learning rate named, best checkpoint kept
    ("lr_rec_explodes", "ETEGRec", [*TRAIN, "--lr_rec=10"], "exploded"),
    ("sasrec_lr_explodes", "SASRec", ["--learning_rate=10", "--epochs=3"],
     "(learning_rate=10): lower the learning rate"),
]


@pytest.fixture(scope="module")
def artifacts(tiny_config_dict, tmp_path_factory):
    """Files the rows point at: broken configs, data folders, embeddings, checkpoints."""
    from recbole_etegrec.quick_start import run

    tmp = tmp_path_factory.mktemp("bad")
    tiny = {k: v for k, v in tiny_config_dict.items() if k != "checkpoint_dir"}
    paths = {"tiny": tmp / "tiny.yaml", "odd_heads": tmp / "odd.yaml", "typo_yaml": tmp / "typo.yaml",
             "broken_yaml": tmp / "broken.yaml", "list_yaml": tmp / "list.yaml", "wide_llama": tmp / "wide.yaml"}
    paths["tiny"].write_text(yaml.safe_dump(tiny))
    paths["odd_heads"].write_text(yaml.safe_dump({"llama_config": {**tiny["llama_config"], "hidden_size": 30,
                                                                   "num_attention_heads": 4}}))
    paths["wide_llama"].write_text(yaml.safe_dump({"llama_config": {**tiny["llama_config"], "hidden_size": 48}}))
    paths["typo_yaml"].write_text("num_beam: 1\n")
    paths["topk20_yaml"] = tmp / "topk20.yaml"
    paths["topk20_yaml"].write_text("topk: [5, 20]\nvalid_metric: NDCG@20\n")
    paths["metric_typo_yaml"] = tmp / "metric_typo.yaml"
    paths["metric_typo_yaml"].write_text("metrics: [Recal, NDCG]\n")
    paths["broken_yaml"].write_text("epochs: 1\nlearning_rate: [1, 2\n")
    paths["llama_typo_yaml"] = tmp / "llama_typo.yaml"
    paths["llama_typo_yaml"].write_text("llama_config: {hidden_sizes: 64}\n")  # HF's 7B sizes, once
    paths["eval_typo_yaml"] = tmp / "eval_typo.yaml"
    paths["eval_typo_yaml"].write_text("eval_args: {group: user}\n")
    paths["llama_70b_yaml"] = tmp / "llama_70b.yaml"
    paths["llama_70b_yaml"].write_text(yaml.safe_dump({"llama_config": LLAMA_70B}))
    (tmp / "llama13b").mkdir()  # a config.json only: the check never reads weights
    (tmp / "llama13b" / "config.json").write_text(json.dumps(LLAMA_13B_CONFIG))
    paths["llama13b_dir"] = tmp / "llama13b"
    paths["list_yaml"].write_text("- epochs\n- 1\n")
    (tmp / "bert").mkdir()
    (tmp / "bert" / "config.json").write_text('{"model_type": "bert", "hidden_size": 32}')
    paths["bert_dir"] = tmp / "bert"
    data = tmp / "data"
    paths["data"] = data
    for name, content in {"empty": b"", "headeronly": HEADER.encode(),
                          "latin1": (HEADER + "1\t2\t3\n1\tcaf\xe9\t4\n").encode("latin-1"),
                          "short": (HEADER + "1\t2\t3\n1\t3\n").encode(),
                          "nonnum": (HEADER + "1\t2\tyesterday\n").encode(),
                          "badheader": b"user_id\titem_id\n1\t2\n",
                          "bom": ("\ufeff" + HEADER + "1\t2\t3\n1\t3\t4\n").encode(),
                          "notime": b"user_id:token\titem_id:token\n1\t2\n1\t3\n",
                          "dupcol": b"user_id:token\titem_id:token\titem_id:token\ttimestamp:float\n1\t2\t2\t3\n",
                          "floatitem": b"user_id:token\titem_id:float\ttimestamp:float\n1\t2\t3\n",
                          "uidcol": b"uid:token\titem_id:token\ttimestamp:float\n1\t2\t3\n",
                          "nantime": (HEADER + "1\t2\t3\n1\t3\tnan\n1\t4\tinf\n1\t5\t6\n").encode(),
                          "emptytime": (HEADER + "1\t2\t3\n1\t3\t\n").encode(),
                          "emptyitem": (HEADER + "1\t2\t3\n1\t \t4\n2\t\t5\n").encode(),
                          "twoeach": (HEADER + "".join(f"{u}\t{2 * u + i}\t{i}\n" for u in range(9)
                                                       for i in (1, 2))).encode(),
                          }.items():
        (data / name).mkdir(parents=True)
        (data / name / f"{name}.inter").write_bytes(content)
    (data / "nointer").mkdir()
    emb = np.random.default_rng(0).normal(size=(ML100K_ITEMS, 16)).astype(np.float32)
    emb[0] = 0
    for name, edit in {"nan_npy": (5, np.nan), "inf_npy": (7, np.inf)}.items():
        bad = emb.copy()
        bad[edit[0], 3] = edit[1]
        np.save(tmp / f"{name}.npy", bad)
        paths[name] = tmp / f"{name}.npy"
    same = np.ones_like(emb)
    same[0] = 0
    np.save(tmp / "same.npy", same)
    np.save(tmp / "short.npy", emb[:10])
    paths.update(same_npy=tmp / "same.npy", short_npy=tmp / "short.npy")
    paths["garbage"] = tmp / "garbage.bin"
    paths["garbage"].write_bytes(random.Random(0).randbytes(4096))  # fixed: the same error every run
    (tmp / "afile").write_text("a file where a folder should be")
    paths["unwritable"] = tmp / "afile" / "out"
    saved = str(tmp / "saved")
    sasrec = run("SASRec", "ml-100k", config_dict={**tiny, "epochs": 1, "checkpoint_dir": saved})
    etegrec = run("ETEGRec", "ml-100k", config_dict={**tiny, "epochs": 1, "checkpoint_dir": saved,
                                                     "cycle": 1, "finetune_epochs": 0, "debug_samples": 25})
    paths.update(sasrec_ckpt=sasrec["saved_model_file"], etegrec_ckpt=etegrec["saved_model_file"])
    paths["truncated"] = tmp / "truncated.pth"
    whole = Path(etegrec["saved_model_file"]).read_bytes()
    paths["truncated"].write_bytes(whole[: len(whole) // 2])
    return {k: str(v) for k, v in paths.items()}


def _args(model, extra, artifacts, checkpoint_dir):
    flag = "--model_list" if "--model_list" in extra else "--model"
    base = [] if flag == "--model_list" else ["--model", model]
    return [*base, "--dataset", "ml-100k", "--config_files", artifacts["tiny"],
            f"--checkpoint_dir={checkpoint_dir}", *[a.format(**artifacts) for a in extra]]


def _fix_config_files(args):
    """A row's own --config_files is layered after the tiny one (argparse keeps the last flag)."""
    files = [args[i + 1] for i, a in enumerate(args) if a == "--config_files"]
    own = [a.split("=", 1)[1] for a in args if a.startswith("--config_files=")]
    rest = [a for i, a in enumerate(args) if a != "--config_files" and not a.startswith("--config_files=")
            and (i == 0 or args[i - 1] != "--config_files")]
    return [*rest, "--config_files", ",".join(files + own)]


def _assert_no_partial_output(folder):
    leftovers = glob.glob(os.path.join(folder, "**", ".*.tmp-*"), recursive=True)
    assert not leftovers, leftovers
    for path in glob.glob(os.path.join(folder, "**", "*.pth"), recursive=True):
        torch.load(path, map_location="cpu", weights_only=False)  # every checkpoint left is complete


def test_the_table_covers_enough_inputs():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name,model,extra,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2(name, model, extra, fragment, artifacts, tmp_path, capfd):
    checkpoint_dir = tmp_path / "saved"
    args = _fix_config_files(_args(model, extra, artifacts, checkpoint_dir))
    try:
        code = run_recbole_etegrec.main(args)
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    out, err = capfd.readouterr()
    assert code == 2, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], err[-3000:]
    assert "Traceback" not in out + err
    if os.path.isdir(checkpoint_dir):
        _assert_no_partial_output(str(checkpoint_dir))
    if name == "lr_rec_explodes":  # epoch 0 was validated: its best checkpoint is kept, complete
        assert glob.glob(os.path.join(checkpoint_dir, f"{model}-*.pth"))


@pytest.mark.parametrize("name", ["typo_num_beam", "beams_below_topk", "inter_header_only",
                                  "checkpoint_dir_unwritable", "llama_config_typo"])
def test_real_script_runs(name, artifacts, tmp_path):
    _, model, extra, fragment = next(c for c in CASES if c[0] == name)
    args = _fix_config_files(_args(model, extra, artifacts, tmp_path / "saved"))
    proc = subprocess.run([sys.executable, str(ROOT / "run_recbole_etegrec.py"), *args], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300,
                          env={"RECBOLE_ETEGREC_NO_TCMALLOC": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0] and "Traceback" not in proc.stderr


def test_evaluation_settings_recbole_accepts_still_pass():
    """The forms RecBole takes (an int topk, any-case names, value metrics with labeled scores)
    pass, and the command-line forms of lists (5,10 and Recall,NDCG) become lists."""
    from recbole_etegrec.config import Config

    config = Config("ETEGRec", "ml-100k", cmd_args=["--topk=10"])
    assert config["topk"] == [10] and config["num_beams"] >= 10
    config = Config("SASRec", "ml-100k", cmd_args=["--topk=5,10", "--metrics=Recall,ndcg", "--valid_metric=ndcg@5"])
    assert config["topk"] == [5, 10] and config["metrics"] == ["Recall", "ndcg"]
    config = Config("SASRec", "ml-100k", cmd_args=["--metrics=[Recall,GAUC]", "--valid_metric=GAUC"])
    assert config["valid_metric"] == "GAUC" and config["valid_metric_bigger"] is True
    config = Config("SASRec", "ml-100k", cmd_args=["--metrics=[AUC,LogLoss]", "--valid_metric=LogLoss",
                                                   "--eval_args={'mode':'labeled'}"])
    assert config["valid_metric_bigger"] is False  # RecBole's smaller_metrics: LogLoss
    config = Config("TIGER", "ml-100k", cmd_args=["--topk=[20]", "--valid_metric=NDCG@20"])  # num_beams 20
    assert config["topk"] == [20]


def test_partial_nested_settings_merge_over_their_defaults(tmp_path):
    """A partial dict keeps the default's other keys (before: HF's 4096-hidden, 32-layer LLaMA);
    layers merge in order (files, config_dict, command line); ~ still switches a dict off."""
    from recbole_etegrec.config import Config
    from recbole_etegrec.model.backbone import build_llama

    default = Config("ETEGRec", "ml-100k")["llama_config"]
    partial = tmp_path / "partial.yaml"
    partial.write_text("llama_config: {num_hidden_layers: 1}\nclip_grad_norm: {norm_type: 1.0}\n")
    config = Config("ETEGRec", "ml-100k", config_file_list=[str(partial)])
    assert config["llama_config"] == {**default, "num_hidden_layers": 1}
    assert config["clip_grad_norm"] == {"max_norm": 1.0, "norm_type": 1.0}
    backbone = build_llama(config)
    assert (backbone.config.hidden_size, backbone.config.intermediate_size, len(backbone.layers)) == (64, 256, 1)
    assert sum(p.numel() for p in backbone.parameters()) < 100_000

    wide = tmp_path / "wide.yaml"
    wide.write_text("llama_config: {hidden_size: 32, num_attention_heads: 2}\n")
    given = {"llama_config": {"num_key_value_heads": 2}}
    config = Config("ETEGRec", "ml-100k", config_file_list=[str(partial), str(wide)], config_dict=given,
                    cmd_args=["--llama_config={'rope_theta': 500000.0}", "--clip_grad_norm=None"])
    assert config["llama_config"] == {**default, "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2,
                                      "num_key_value_heads": 2, "rope_theta": 500000.0}  # a real LlamaConfig field
    assert config["clip_grad_norm"] is None and given == {"llama_config": {"num_key_value_heads": 2}}
    budget = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
              "intermediate_size": 512}  # properties/benchmark/*.yaml pass whole dicts through config_dict
    assert Config("ETEGRec", "ml-100k", config_dict={"llama_config": budget})["llama_config"] == budget

    # eval_args: a new mode keeps the protocol's leave-one-out split by time (RecBole alone fell back
    # to its random 80/10/10 split); a new split replaces the old one whole
    config = Config("SASRec", "ml-100k", cmd_args=["--eval_args={'mode':'uni100'}"])
    assert config["eval_args"] == {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user",
                                   "mode": {"valid": "uni100", "test": "uni100"}}
    config = Config("SASRec", "ml-100k", cmd_args=["--eval_args={'split':{'RS':[0.8,0.1,0.1]}}"])
    assert config["eval_args"]["split"] == {"RS": [0.8, 0.1, 0.1]} and config["eval_args"]["order"] == "TO"


def test_memory_check_compares_the_backbone_with_the_device(tmp_path, monkeypatch):
    """Both numbers and the rule in one line; the tiny default fits; LLaMA2-7B + LoRA in bf16 fits
    16 GB (frozen weights once, adapters x 4) while full training of it does not."""
    from recbole_etegrec import validation
    from recbole_etegrec.config import Config
    from recbole_etegrec.errors import EtegrecError

    monkeypatch.setattr(validation, "available_memory", lambda device: (1_000_000, "test budget"))
    with pytest.raises(EtegrecError) as err:
        Config("ETEGRec", "ml-100k")
    message = str(err.value)
    assert "(llama_config from properties/model/ETEGRec.yaml) has 0.00B parameters: training needs about 2.1 MB" \
        in message and "but only 1.0 MB is available (test budget): shrink llama_config" in message
    monkeypatch.setenv(validation.MEMORY_CHECK_ENV, "1")
    Config("ETEGRec", "ml-100k")  # skipped on request
    monkeypatch.delenv(validation.MEMORY_CHECK_ENV)

    llama7b = tmp_path / "llama7b"
    llama7b.mkdir()
    (llama7b / "config.json").write_text(json.dumps({**LLAMA_13B_CONFIG, "hidden_size": 4096, "num_hidden_layers": 32,
                                                     "num_attention_heads": 32, "num_key_value_heads": 32,
                                                     "intermediate_size": 11008}))
    overlay = [str(ROOT / "properties" / "llama2-7b.yaml")]
    monkeypatch.setattr(validation, "available_memory", lambda device: (16e9, "a 16 GB GPU"))
    config = Config("ETEGRec", "ml-100k", config_file_list=overlay, cmd_args=[f"--llama_path={llama7b}"])
    estimate = validation.llama_memory(config.final_config_dict)
    assert estimate["params"] == 6_607_343_616 and estimate["trainable"] == 67_108_864  # r 64 on q/k/v/o
    assert 13e9 < estimate["bytes"] < 16e9
    with pytest.raises(EtegrecError, match=r"has 6.61B parameters: training needs about 52.1 GB .* but only "
                                           r"16.0 GB is available \(a 16 GB GPU\): train LoRA adapters"):
        Config("ETEGRec", "ml-100k", config_file_list=overlay, cmd_args=[f"--llama_path={llama7b}", "--lora=False"])


def test_nan_loss_is_one_error_line(artifacts, tmp_path, capfd, monkeypatch):
    from recbole.model.sequential_recommender import SASRec

    monkeypatch.setattr(SASRec, "calculate_loss", lambda self, inter: torch.tensor(float("nan"), requires_grad=True))
    code = run_recbole_etegrec.main(_args("SASRec", [], artifacts, tmp_path / "saved"))
    err = capfd.readouterr().err
    assert code == 2 and "error: training loss is nan in epoch 0 (learning_rate=" in err and "Traceback" not in err


def test_duplicated_interactions_are_counted_and_dropped(artifacts, tmp_path, caplog):
    """200 duplicated lines: warned with their count, dropped, same metrics as the clean file."""
    import recbole

    from recbole_etegrec.quick_start import run

    source = os.path.join(os.path.dirname(recbole.__file__), "dataset_example", "ml-100k", "ml-100k.inter")
    lines = open(source, encoding="utf-8").read().splitlines(keepends=True)
    results = {}
    for name, body in {"clean": lines, "dup": lines + lines[1:201]}.items():
        folder = tmp_path / name / "mlcopy"  # RecBole always reads "ml-100k" from its wheel
        folder.mkdir(parents=True)
        (folder / "mlcopy.inter").write_text("".join(body), encoding="utf-8")
        caplog.clear()
        results[name] = run("Pop", "mlcopy", config_dict={
            "data_path": str(tmp_path / name), "state": "WARNING", "checkpoint_dir": str(tmp_path / "saved"),
            "show_progress": False, "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"}})
        warned = [r.getMessage() for r in caplog.records if "duplicated interactions" in r.getMessage()]
        assert warned == ([] if name == "clean" else ["mlcopy.inter: 200 duplicated interactions (equal in every "
                                                       "loaded column) dropped, the first of each kept"])
    assert results["dup"]["test_result"] == results["clean"]["test_result"]


def test_users_too_short_to_be_tested_are_counted(tmp_path, caplog):
    """Leave-one-out tests a user with at least 3 interactions: 4 users with 1 or 2 (of 12) are
    one warning with the count; they only train, and the 8 others are tested."""
    from recbole_etegrec.quick_start import run

    folder = tmp_path / "short"
    folder.mkdir()
    rows = [(u, (u * 3 + i) % 15 + 1, i) for u in range(12) for i in range(1 if u < 2 else 2 if u < 4 else 6)]
    (folder / "short.inter").write_text(HEADER + "".join(f"u{u}\ti{i}\t{t}\n" for u, i, t in rows))
    result = run("SASRec", "short", config_dict={
        "data_path": str(tmp_path), "state": "WARNING", "checkpoint_dir": str(tmp_path / "saved"), "epochs": 1,
        "show_progress": False, "hidden_size": 16, "inner_size": 32, "topk": [5, 10]})
    warned = [r.getMessage() for r in caplog.records if "too few interactions" in r.getMessage()]
    assert warned == ["short.inter: 4 of 12 users have too few interactions to be tested (eval_args.split): "
                      "training data at most"]
    assert len(result["test_per_user"]["users"]) == 8


def test_corrupt_tokenizer_cache_is_rebuilt(tiny_config_dict, tmp_path, caplog):
    from conftest import build

    from recbole_etegrec.stages.item_tokenizer import load_or_pretrain, tokenizer_cache_path
    from recbole_etegrec.tokenizer import load_tokenizer

    config, (train, _, _) = build("TIGER", {**tiny_config_dict, "checkpoint_dir": str(tmp_path)})
    first = load_or_pretrain(config, train._dataset)
    path = tokenizer_cache_path(config)
    Path(path).write_bytes(Path(path).read_bytes()[:100])  # a truncated cache
    again = load_or_pretrain(config, train._dataset)
    assert any("is unusable" in r.getMessage() for r in caplog.records)
    assert torch.equal(again.code_table.codes, first.code_table.codes)
    load_tokenizer(path)  # rewritten whole


def test_corrupt_embedding_cache_is_rebuilt(tmp_path, monkeypatch, caplog):
    from recbole_etegrec.stages import item_embeddings as embeddings

    cache = tmp_path / "item_emb" / "x.npy"
    cache.parent.mkdir()
    cache.write_bytes(b"\x93NUMPY garbage")
    fresh = torch.randn(5, 4)
    monkeypatch.setattr(embeddings, "embedding_cache_path", lambda config: str(cache))
    monkeypatch.setattr(embeddings, "_sasrec_embeddings", lambda config, dataset: fresh.clone())
    dataset = type("D", (), {"item_num": 5})()
    from recbole_etegrec.config import Config

    config = Config(model="ETEGRec", dataset="toy", config_dict={"item_emb_source": "sasrec"})
    emb = embeddings.load_item_embeddings(config, dataset)
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert torch.equal(torch.from_numpy(np.load(cache)), emb) and emb[0].abs().sum() == 0


def test_an_unwritable_working_directory_is_one_line(tmp_path):
    """RecBole writes ./log and ./log_tensorboard: a working directory where 'log' cannot be a
    folder stops before any data is read, with one line."""
    (tmp_path / "log").write_text("a file where RecBole's log folder should be")
    proc = subprocess.run([sys.executable, str(ROOT / "run_recbole_etegrec.py"), "--model", "Pop",
                           "--dataset", "ml-100k", f"--checkpoint_dir={tmp_path / 'saved'}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={"RECBOLE_ETEGREC_NO_TCMALLOC": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert "RecBole's log folder 'log/Pop' is not writable" in errors[0] and "writable working directory" in errors[0]
