"""The one train loop and its parts.

  loop.train(config, workdir)      run / resume a method's training (t2ijax.train.loop)
  method.Method                    the interface a method implements (t2ijax.train.method)
  state.TrainState                 step, params, opt_state, ema, rng
  checkpoint.Checkpointer          Orbax manager: items per sub-model + config + data iterator
  optim.make_optimizer             AdamW + schedule + clipping + accumulation from config.optim
  metrics                          JSONL / TensorBoard writers, throughput, MFU
  sampling.load_for_inference      trained (or random) params for sampling / export
  synthetic.make_loader            dataset-free loader with the data pipeline's interface
"""
