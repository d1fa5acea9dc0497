"""The paper's generated parts: the decision table behind the flowchart, the LaTeX tables and the
macro file that carries every number the text quotes, all computed from the cached summary tables."""
