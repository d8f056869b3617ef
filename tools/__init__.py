"""Developer tools that are not part of the installed package: the sample model and scan generator."""
