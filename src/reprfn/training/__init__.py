"""The parts of the trainer that are not its loop (the loop is ``reprfn.train``).

* ``distributed``: the device and the torchrun process group;
* ``build``: the model, schedule and data loader a configuration describes;
* ``ema``: the exponential moving average of the weights;
* ``state``: the training state, its checkpoint and the checks of a resume;
* ``validation``: the validation images and their score.
"""
