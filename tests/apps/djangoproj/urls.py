from django.urls import path

from djangoproj import views

urlpatterns = [
    path("", views.index),
    path("form/", views.form),
    path("upload/", views.upload),
    path("cookies/set/", views.cookie_set),
    path("cookies/read/", views.cookie_read),
    path("café/<str:name>/", views.cafe),
    path("日本/", views.cafe, {"name": "nihon"}),
    path("stream/", views.stream),
    path("download/<str:name>", views.download),
    path("db/", views.db),
]
