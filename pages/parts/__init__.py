"""What the pages share, one job per module: first_visit, state, settings, server, sidebar and text.

It is a folder below pages/ so that Streamlit's pages-folder mode (see first_visit) does not list its modules as pages.
"""
