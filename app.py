"""inferplan's planning app: `streamlit run app.py`. A view over the simulator's public API (simulator.api).

The pages live in app_pages/, not pages/: Streamlit lists a pages/ folder's files as pages of their own
when a browser opens a page's URL directly, beside st.navigation's.
"""

import streamlit as st

st.set_page_config(page_title="inferplan", page_icon="📈", layout="wide")

pages = [
    st.Page("app_pages/plan.py", title="Plan", default=True),
    st.Page("app_pages/compare.py", title="Compare"),
    st.Page("app_pages/capacity.py", title="Capacity"),
    st.Page("app_pages/calibration.py", title="Calibration"),
]
st.navigation(pages).run()
