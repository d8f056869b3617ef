"""What a model does with one work item, per task: decode its inputs, predict on the device, return a Prediction.

``base.py`` holds the task-independent contract (WorkItem, Prediction, Predictor); one module per task
implements it (``segmentation.py``). The pipeline and the writers only speak the contract.
"""
