"""The bound engine: sound bounds on a graph over a spec (IBP, CROWN-IBP, CROWN, alpha-CROWN, with receptive-field
local rows for conv layers), PGD attacks, and the VNN-COMP answer procedure that combines them."""
